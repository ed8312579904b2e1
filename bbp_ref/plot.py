"""Pictures of explanations: the paper's two figures (docs/reproduction.md, Claim 2) for
any model.

`attribution_figure` draws the poster's "Examples of attribution results": one row per
input, labelled with its true (if given) and predicted class, the input, then for each
chosen method (`method_maps`; the poster's are `POSTER_METHODS`):

    gradient: norm. grad. | gradient-x-input: grad. x input | ig, ig-exact: norm. IG, IG
    attrib. | bbp-<rule>: norm. bias.k, bias.k attrib.   (abs, signed, uniform = bias.1, 2, 3)

`layer_figure` draws the poster's "Bias attribution of various layers": the input, then
for each layer with a bias the BBp attribution of that layer's bias alone
(``explain(..., layers=[name])``), then of all biases together. Columns wrap into bands of
at most `MAX_COLUMNS`, and every column title is the node's full name, broken into lines.

What the panels show (the poster does not say; these are this project's choices):

* **norm. M** ("normalised"): the map divided by its own largest magnitude,
  ``M / max|M|`` per input, so every panel spans [-1, 1] and shows where the map
  concentrates, whatever its scale. For the gradient, ``M = W^x[t]`` (a sensitivity, not
  an attribution); for IG and BBp, ``M`` is the attribution itself.
* **M attrib.** ("attribution map"): the additive contribution of each input feature to
  the explained logit ``f_t(x)``, in logit units, unnormalised: ``W^x[t] * x`` (sums to
  `W^x x`), integrated gradients from the all-zero baseline (sums to
  ``f_t(x) - f_t(0)``), and the bias attribution ``B(x)`` (sums to ``b^x``). Each panel's
  sum is printed under it; grad. x input plus a bias attribution is a complete
  decomposition of ``f_t(x)``.
* Colours: a diverging map (``RdBu_r``: red positive, blue negative, white zero) with
  limits symmetric about zero; one colour scale per column, shared by all rows (for
  "norm." columns ``[-1, 1]``, for attribution columns ``±`` the largest magnitude in the
  column), with a colour bar under each column. Inputs are drawn in grey.
* How an input is drawn depends on its per-example shape (`input_kind`):
  ``[C, H, W]`` or ``[H, W]`` is an image, the maps summed over channels; with 3 channels
  the input is drawn in colour (rescaled to [0, 1]) and each map is drawn *over* a grey
  copy of it (in mid greys), opaque where the map is large (from its 99th percentile of
  magnitude on) and transparent where it is 0 (the plain input stands beside them in the
  first column); the colour scale of these columns ends at the 99th percentile of their
  magnitudes, so that a few extreme pixels do not wash out the rest. A flat input of at
  most `MAX_BARS` features is a bar chart over the feature index, a longer one or a
  ``[C, L]`` signal (``C <= 4``, ``L >= 2 C``) a line chart (one line per channel); their
  y-axis is shared by each column and symmetric about zero, like the colour scales.

matplotlib is imported only when a figure is drawn (`MissingDependencyError`, an
`InputError`, if it is not installed). Figures are built as ``matplotlib.figure.Figure``
objects without pyplot, so no GUI backend or global state is involved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .experiments.maps import POSTER_NAMES, layer_maps, method_maps
from .experiments.optional import require
from .explain import Explanation
from .model import load
from .progress import Progress

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CMAP = "RdBu_r"
INPUT_CMAP = "gray"
PANEL_INCHES = 1.0  # an image panel's side; larger images get up to MAX_PANEL_INCHES
MAX_PANEL_INCHES = 2.4
PIXELS_PER_INCH = 96  # image pixels per inch of panel (so that 224 pixels get 2.3 inches)
DPI = 100
MAX_COLUMNS = 8  # the layer figure wraps into bands of at most this many columns
MAX_BARS = 64  # a flat input with more features is drawn as a line
TITLE_WIDTH = 16  # characters per line of a column title
OVERLAY_ALPHA = 0.85  # opacity of a map over a colour image where |map| is large
OVERLAY_QUANTILE = 0.99  # |map| at this quantile and above is drawn at OVERLAY_ALPHA

INPUT, NORMALISED, ATTRIBUTION = "input", "normalised", "attribution"
IMAGE, RGB, BARS, LINES = "image", "rgb", "bars", "lines"
#: The poster's columns (docs/reproduction.md): the gradient, gradient x input, exact
#: integrated gradients and the three BBp rules.
POSTER_METHODS = ("gradient", "gradient-x-input", "ig-exact", "bbp-abs", "bbp-signed",
                  "bbp-uniform")


@dataclass(frozen=True)
class Column:
    """One column of a figure: a title, the maps of every row (``[N, *input]`` as the model
    takes them), the kind of panel (``"input"``, ``"normalised"`` or ``"attribution"``) and,
    for attribution columns, the sum of each row's map printed under it."""

    title: str
    maps: np.ndarray
    kind: str
    sums: np.ndarray | None = None


def grid_methods(names: Sequence[str], rule: str = "abs") -> tuple[str, ...]:
    """The command line's ``--methods`` as `method_maps` names: ``bbp`` is BBp with
    ``rule``; repeated methods are drawn once."""
    chosen = [f"bbp-{rule}" if name == "bbp" else name for name in names]
    return tuple(dict.fromkeys(chosen))


def attribution_figure(model: object, x: object, labels: Sequence[int] | np.ndarray | None = None,
                       target: object = None, methods: Sequence[str] = POSTER_METHODS,
                       class_names: Sequence[str] | None = None, ig_baseline: float = 0.0,
                       ig_steps: int = 32, title: str | None = None,
                       progress: Progress | None = None,
                       explained: Explanation | None = None) -> Figure:
    """The attribution grid for the inputs ``x`` (one example or a batch) of ``model``;
    ``labels``: their true classes (optional); ``target``: the explained output (default:
    the predicted class); ``methods``: the columns (`method_maps`; default the poster's);
    ``explained``: `explain`'s result for these arguments, if already computed. See the
    module for what each panel shows."""
    m = load(model, example=x)
    maps = method_maps(m, x, methods, target=target, ig_baseline=ig_baseline,
                       ig_steps=ig_steps, progress=progress, explained=explained)
    columns = [Column("input", maps.x, INPUT)]
    for method in methods:
        columns += _method_columns(method, maps.maps[method])
    rows = row_labels(maps.predicted, maps.target, labels, class_names, len(maps.x))
    return draw_grid(columns, rows, title or _title(m, "explained: " + _target_text(target)),
                     _grid_note(methods, ig_baseline, ig_steps))


def _method_columns(method: str, values: np.ndarray) -> list[Column]:
    if method == "gradient":
        return [Column("norm.\ngrad.", normalise(values), NORMALISED)]
    if method == "gradient-x-input":
        return [Column("grad.\n× input", values, ATTRIBUTION, _sums(values))]
    if method in ("ig", "ig-exact"):
        return [Column("norm.\nIG", normalise(values), NORMALISED),
                Column("IG\nattrib.", values, ATTRIBUTION, _sums(values))]
    rule = method[len("bbp-"):]
    name = POSTER_NAMES.get(rule, rule)
    return [Column(f"norm. {name}\n({rule})", normalise(values), NORMALISED),
            Column(f"{name} attrib.\n({rule})", values, ATTRIBUTION, _sums(values))]


def _grid_note(methods: Sequence[str], ig_baseline: float, ig_steps: int) -> str:
    parts = ["norm. = map / max|map| per input;  attrib. = contribution to the explained "
             "logit (Σ under each panel):"]
    if "gradient-x-input" in methods:
        parts.append("grad.×input sums to W^x x,")
    for method, how in (("ig", f"Gauss-Legendre, {ig_steps} points"), ("ig-exact", "exact")):
        if method in methods:
            parts.append(f"IG (baseline {ig_baseline:g}, {how}) to f(x) − f(baseline),")
    if any(m.startswith("bbp-") for m in methods):
        parts.append("bias.k (BBp) to b^x, the bias term of f(x) = W^x x + b^x")
    return " ".join(parts).rstrip(",")


def layer_figure(model: object, x: object, labels: Sequence[int] | np.ndarray | None = None,
                 target: object = None, rule: str = "abs", layers: Sequence[str] | None = None,
                 class_names: Sequence[str] | None = None, title: str | None = None,
                 progress: Progress | None = None) -> Figure:
    """The poster's per-layer view: for each layer with a bias (or each of ``layers``),
    the BBp attribution (``rule``) of that layer's bias alone, and of all biases."""
    m = load(model, example=x)
    lm = layer_maps(m, x, target=target, rule=rule, layers=layers, progress=progress)
    n = len(lm.x)
    columns = [Column("input", lm.x, INPUT)]
    for name, op in lm.layers:
        columns.append(Column(f"{wrap_name(name)}\n({op})", lm.attribution[name], ATTRIBUTION,
                              lm.contribution[name]))
    columns.append(Column("all biases\n(= B(x))", lm.total, ATTRIBUTION, _sums(lm.total)))
    rows = row_labels(lm.predicted, lm.target, labels, class_names, n)
    note = (f"BBp rule {rule} ({POSTER_NAMES.get(rule, rule)}); each column: the attribution "
            "of one layer's bias alone (layers=[name]); Σ = that layer's share of b^x")
    return draw_grid(columns, rows, title or _title(m, "bias attribution per layer, "
                                                       "explained: " + _target_text(target)),
                     note, max_columns=MAX_COLUMNS)


def explain_plot(model: object, x: object, out_path: str | Path | None,
                 labels: Sequence[int] | np.ndarray | None = None, target: object = None,
                 rule: str = "abs", layers: Sequence[str] | None = None,
                 layers_out_path: str | Path | None = None,
                 methods: Sequence[str] = POSTER_METHODS, ig_steps: int = 32, dpi: int = DPI,
                 progress: Progress | None = None,
                 explained: Explanation | None = None) -> list[Path]:
    """Write `attribution_figure` of ``x`` (``methods``) to ``out_path`` (PNG, SVG, PDF, by
    its suffix; None: not drawn) and, if ``layers_out_path`` is given, `layer_figure` (BBp
    ``rule``, ``layers``) to it; ``explained``: `explain`'s result for ``x`` and ``target``
    (all layers), reused by the grid. Returns the paths written."""
    m = load(model, example=x)
    written = []
    if out_path is not None:
        figure = attribution_figure(m, x, labels=labels, target=target, methods=methods,
                                    ig_steps=ig_steps, progress=progress, explained=explained)
        written.append(save(figure, out_path, dpi))
    if layers_out_path is not None:
        written.append(save(layer_figure(m, x, labels=labels, target=target, rule=rule,
                                         layers=layers, progress=progress),
                            layers_out_path, dpi))
    return written


def save(figure: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``figure`` to ``path`` (`InputError` if it cannot be written)."""
    out = Path(path)
    if dpi < 10 or dpi > 1200:
        raise InputError(f"the resolution must be between 10 and 1200 dpi, got {dpi}")
    try:
        figure.savefig(out, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the figure to {out}: {exc}") from exc
    return out


# -- the drawing -----------------------------------------------------------------------


def input_kind(example_shape: Sequence[int]) -> str:
    """How an input of per-example ``example_shape`` is drawn (see the module):
    ``"image"``, ``"rgb"``, ``"bars"`` or ``"lines"``."""
    shape = tuple(example_shape)
    if len(shape) == 1:
        return BARS if shape[0] <= MAX_BARS else LINES
    if len(shape) == 2:
        return LINES if shape[0] <= 4 and shape[1] >= 2 * shape[0] else IMAGE
    if len(shape) == 3:
        return RGB if shape[0] == 3 else IMAGE
    raise InputError(f"cannot draw inputs of shape {list(shape)}: a picture needs a flat, "
                     "[C, L], [H, W] or [C, H, W] input")


def draw_grid(columns: Sequence[Column], rows: Sequence[str], title: str = "",
              note: str = "", max_columns: int | None = None) -> Figure:
    """A figure of ``len(rows)`` x ``len(columns)`` panels (see the module for the colour
    conventions): column titles on top, row labels on the left, a colour bar (images) or
    a shared y-axis (charts) per column, ``title`` above and ``note`` below. With
    ``max_columns`` the columns wrap into bands of that many, one under the other. The
    layout is fixed in inches (no layout engine), so it is fast and nothing overlaps. Axes
    are labelled ``"panel i j"`` (row ``i``, column ``j``) and ``"colour bar j"``."""
    require("matplotlib", "matplotlib")
    from matplotlib.figure import Figure

    n = len(rows)
    for column in columns:
        if len(column.maps) != n:
            raise InputError(f"column {column.title!r} has {len(column.maps)} maps for "
                             f"{n} rows")
    kind = input_kind(columns[0].maps.shape[1:]) if columns else IMAGE
    per_band = max(1, min(max_columns or len(columns), len(columns)))
    bands = [columns[i:i + per_band] for i in range(0, len(columns), per_band)]
    pixels = max(columns[0].maps.shape[-2:]) if kind in (IMAGE, RGB) and columns else 0
    box = _Layout(n, per_band, [max(c.title.count("\n") + 1 for c in band) for band in bands],
                  bool(title), bool(note), kind, pixels)
    fig = Figure(figsize=(box.width, box.height))
    background = next((c.maps for c in columns if c.kind == INPUT), None)
    for j, column in enumerate(columns):
        band, k = divmod(j, per_band)
        if kind in (BARS, LINES):
            _draw_chart_column(fig, box, column, rows, j, band, k, kind)
        else:
            _draw_image_column(fig, box, column, rows, j, band, k, kind, background)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / box.height, va="top", wrap=True)
    if note:
        fig.supxlabel(note, fontsize=7, y=0.06 / box.height, va="bottom", wrap=True)
    return fig


def _draw_image_column(fig: Figure, box: _Layout, column: Column, rows: Sequence[str], j: int,
                       band: int, k: int, kind: str, background: np.ndarray | None) -> None:
    overlay = kind == RGB and column.kind != INPUT and background is not None
    images, style = _display(column, robust=overlay)
    grey = _grey(background) if overlay and background is not None else None
    for i in range(len(rows)):
        ax = fig.add_axes(box.panel(i, band, k), label=f"panel {i} {j}")
        if grey is not None:
            ax.imshow(grey[i], cmap=INPUT_CMAP, vmin=-0.4, vmax=1.4, aspect="auto",
                      interpolation=style["interpolation"])  # mid greys: colours stand out
            opacity = overlay_alpha(images[i])
            image = ax.imshow(images[i], aspect="auto", alpha=opacity, **style)
        else:
            image = ax.imshow(images[i], aspect="auto", **style)
        ax.set_xticks([])
        ax.set_yticks([])
        _label_panel(ax, column, rows, i, k)
    if kind == RGB and column.kind == INPUT:
        return  # colours, not a scale
    cax = fig.add_axes(box.colour_bar(band, k), label=f"colour bar {j}")
    _colour_bar(fig, image, cax, style["vmin"], style["vmax"])


def _draw_chart_column(fig: Figure, box: _Layout, column: Column, rows: Sequence[str], j: int,
                       band: int, k: int, kind: str) -> None:
    """Bar or line charts of one column: x the feature (or position), y the value, the
    y-limits shared by the column (symmetric about 0 for maps)."""
    values = np.asarray(column.maps, dtype=np.float64)
    values = values.reshape(len(values), 1, -1) if values.ndim == 2 else values
    if column.kind == INPUT:
        low, high = float(values.min()), float(values.max())
        pad = 0.05 * (high - low) or 1.0
        low, high = min(low, 0.0) - pad, max(high, 0.0) + pad
    else:
        limit = 1.0 if column.kind == NORMALISED else symmetric_limit(values)
        low, high = -1.05 * limit, 1.05 * limit
    positions = np.arange(values.shape[2])
    for i in range(len(rows)):
        ax = fig.add_axes(box.panel(i, band, k), label=f"panel {i} {j}")
        for c, line in enumerate(values[i]):
            colour = "0.35" if column.kind == INPUT else f"C{c}"
            if kind == BARS:
                ax.bar(positions, line, width=0.8, color=np.where(
                    line >= 0, "#c0392b", "#2c7bb6") if column.kind != INPUT else colour)
            else:
                ax.plot(positions, line, linewidth=0.9, color=colour,
                        label=f"channel {c}" if values.shape[1] > 1 else None)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_ylim(low, high)
        ax.set_xlim(-0.6, values.shape[2] - 0.4)
        ax.tick_params(labelsize=6, length=2, pad=1)
        ax.xaxis.set_major_locator(_integer_locator())
        if i == len(rows) - 1:
            ax.set_xlabel(("feature" if kind == BARS else "position") + (
                f"\nΣ = {column.sums[i]:+.3g}" if column.sums is not None else ""), fontsize=6,
                labelpad=1)
        elif column.sums is not None:
            ax.set_xlabel(f"Σ = {column.sums[i]:+.3g}", fontsize=6, labelpad=1)
        if i == 0:
            ax.set_title(column.title, fontsize=7, pad=3)
        if k == 0:
            ax.set_ylabel(rows[i], fontsize=7)
        if i == 0 and k == 0 and values.shape[1] > 1 and kind == LINES:
            ax.legend(fontsize=5, loc="upper right", frameon=False)


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=5, integer=True)


def _label_panel(ax: Any, column: Column, rows: Sequence[str], i: int, k: int) -> None:
    if i == 0:
        ax.set_title(column.title, fontsize=7 if column.title.count("\n") > 1 else 8, pad=3)
    if k == 0:
        ax.set_ylabel(rows[i], fontsize=8)
    if column.sums is not None:
        ax.set_xlabel(f"Σ = {column.sums[i]:+.3g}", fontsize=7, labelpad=1)


class _Layout:
    """Positions (figure fractions) of the panels and colour bars of ``n`` rows and
    bands of ``k`` columns, one band under the other, from fixed sizes in inches; charts
    get wider panels and room for their axes."""

    HGAP, VGAP = 0.14, 0.3
    LEFT, RIGHT, TITLE, TITLE_LINE = 0.55, 0.15, 0.32, 0.13
    BAR_GAP, BAR, BAR_LABELS, NOTE, BAND_GAP = 0.3, 0.09, 0.2, 0.34, 0.25

    def __init__(self, n: int, k: int, title_lines: Sequence[int], title: bool, note: bool,
                 kind: str, pixels: int = 0) -> None:
        chart = kind in (BARS, LINES)
        side = min(max(PANEL_INCHES, pixels / PIXELS_PER_INCH), MAX_PANEL_INCHES)
        self.panel_width = 1.9 if chart else side
        self.panel_height = 1.1 if chart else side
        self.hgap = 0.42 if chart else self.HGAP  # charts: room for each column's y-axis
        self.vgap = 0.42 if chart else self.VGAP
        self.left = 0.95 if chart else self.LEFT
        self.bar = 0.0 if chart else self.BAR_GAP + self.BAR + self.BAR_LABELS
        self.n = n
        top = (self.TITLE if title else 0.1) + 0.1
        self.band_tops = []
        for lines in title_lines:
            top += self.TITLE_LINE * lines
            self.band_tops.append(top)
            top += n * self.panel_height + (n - 1) * self.vgap + self.bar + self.BAND_GAP
            top += 0.35 if chart else 0.0  # the x-axis labels
        self.bottom = (self.NOTE if note else 0.05)
        self.width = self.left + k * self.panel_width + (k - 1) * self.hgap + self.RIGHT
        self.height = top - self.BAND_GAP + self.bottom

    def _box(self, left: float, top: float, w: float,
             h: float) -> tuple[float, float, float, float]:
        """``[x0, y0, w, h]`` in figure fractions of a box given in inches from the
        figure's left and top edges."""
        return (left / self.width, 1 - (top + h) / self.height, w / self.width,
                h / self.height)

    def _left(self, k: int) -> float:
        return self.left + k * (self.panel_width + self.hgap)

    def panel(self, i: int, band: int, k: int) -> tuple[float, float, float, float]:
        top = self.band_tops[band] + i * (self.panel_height + self.vgap)
        return self._box(self._left(k), top, self.panel_width, self.panel_height)

    def colour_bar(self, band: int, k: int) -> tuple[float, float, float, float]:
        top = (self.band_tops[band] + self.n * self.panel_height + (self.n - 1) * self.vgap
               + self.BAR_GAP)
        inset = 0.05 * self.panel_width
        return self._box(self._left(k) + inset, top, self.panel_width - 2 * inset, self.BAR)


def _colour_bar(fig: Figure, image: Any, cax: Any, low: float, high: float) -> None:
    """A horizontal colour bar in ``cax`` with ticks at both ends and the middle, the
    end labels aligned inwards so that neighbouring bars' labels never touch."""
    bar = fig.colorbar(image, cax=cax, orientation="horizontal")
    if bar.solids is not None:  # opaque, also under a see-through overlay
        bar.solids.set_alpha(1.0)
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    middle = (low + high) / 2
    bar.set_ticks([low, middle, high])
    labels = bar.ax.set_xticklabels([f"{low:.2g}", "0" if middle == 0 else f"{middle:.2g}",
                                     f"{high:.2g}"])
    labels[0].set_horizontalalignment("left")
    labels[-1].set_horizontalalignment("right")


def _display(column: Column, robust: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The images of a column and their `imshow` style (colour map and limits); with
    ``robust`` (maps over colour images) a map column's limit is the 99th
    percentile of its magnitudes (larger values are drawn in the end colours)."""
    if column.kind == INPUT:
        images = to_images(column.maps, rgb=True)
        low, high = float(images.min()), float(images.max())
        if images.ndim == 4:  # RGB, rescaled to [0, 1] per image
            images = _unit_range(images)
            low, high = 0.0, 1.0
        return images, {"cmap": INPUT_CMAP, "vmin": low, "vmax": high if high > low
                        else low + 1.0, "interpolation": _interpolation(images)}
    if column.kind not in (NORMALISED, ATTRIBUTION):
        raise InputError(f"unknown column kind {column.kind!r}")
    images = to_images(column.maps, rgb=False)
    limit = 1.0 if column.kind == NORMALISED else symmetric_limit(images)
    if robust:
        limit = float(np.quantile(np.abs(images), OVERLAY_QUANTILE)) or limit
    return images, {"cmap": CMAP, "vmin": -limit, "vmax": limit,
                    "interpolation": _interpolation(images)}


def _interpolation(images: np.ndarray) -> str:
    """Small images as sharp pixels; large ones (shrunk to fit a panel) antialiased."""
    return "nearest" if max(images.shape[1:3]) <= 2 * PIXELS_PER_INCH else "antialiased"


def overlay_alpha(image: np.ndarray) -> np.ndarray:
    """The opacity of a map drawn over a colour image: `OVERLAY_ALPHA` times ``|map|`` over
    its 99th percentile, at most `OVERLAY_ALPHA` (0 where the map is 0), so that a few
    extreme pixels do not make the rest invisible."""
    magnitude = np.abs(image)
    scale = float(np.quantile(magnitude, OVERLAY_QUANTILE))
    scale = scale if scale > 0 else float(magnitude.max()) or 1.0
    return OVERLAY_ALPHA * np.clip(magnitude / scale, 0.0, 1.0)


def _unit_range(images: np.ndarray) -> np.ndarray:
    """Each image of the batch rescaled to [0, 1] (a constant image to 0)."""
    span = images.reshape(len(images), -1)
    shape = (len(images),) + (1,) * (images.ndim - 1)
    lo, hi = span.min(axis=1).reshape(shape), span.max(axis=1).reshape(shape)
    return (images - lo) / np.where(hi > lo, hi - lo, 1.0)


def _grey(inputs: np.ndarray) -> np.ndarray:
    """``[N, 3, H, W]`` colour inputs as grey images in [0, 1] (the channels' mean),
    the background of the overlays."""
    return _unit_range(np.asarray(inputs, dtype=np.float64).mean(axis=1))


def symmetric_limit(values: np.ndarray) -> float:
    """The largest magnitude in ``values`` (1 if they are all zero): colour limits
    ``[-limit, limit]`` centre the diverging map at zero."""
    top = float(np.max(np.abs(values))) if values.size else 0.0
    return top if top > 0 and math.isfinite(top) else 1.0


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map of the batch divided by its own largest magnitude (all-zero maps stay
    zero): values in [-1, 1]."""
    flat = maps.reshape(len(maps), -1)
    top = np.abs(flat).max(axis=1)
    return (flat / np.where(top > 0, top, 1.0)[:, None]).reshape(maps.shape)


def to_images(maps: np.ndarray, rgb: bool) -> np.ndarray:
    """A batch of per-example image arrays (``[N, H, W]`` or ``[N, C, H, W]``) as drawable
    images: ``[N, H, W]``, or ``[N, H, W, 3]`` for a 3-channel input when ``rgb``; maps
    with channels are summed over ``C`` otherwise."""
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim == 3:
        return a
    if a.ndim == 4:
        if rgb and a.shape[1] == 3:
            return a.transpose(0, 2, 3, 1)
        return a.sum(axis=1)
    raise InputError(f"cannot draw inputs of shape {list(a.shape[1:])} as images: an image "
                     "is [H, W] or [C, H, W]")


def wrap_name(name: str, width: int = TITLE_WIDTH) -> str:
    """A node name broken into lines of at most ``width`` characters, after ``/``, ``.``,
    ``_`` or ``-`` where possible: the full name, readable in a column title."""
    pieces = re.findall(r"[^/._-]*[/._-]?", name)
    lines, line = [], ""
    for piece in (p for p in pieces if p):
        while len(piece) > width:  # a piece longer than a line: cut it
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    if line:
        lines.append(line)
    return "\n".join(lines)


def row_labels(predicted: np.ndarray, target: np.ndarray, labels: Sequence[int] | np.ndarray | None,
               class_names: Sequence[str] | None, n: int) -> list[str]:
    """``"true 3\\npred 3"`` per row (``"pred 3"`` without labels), plus the explained
    output when it is not the prediction."""
    if labels is not None and len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} inputs")

    def name(k: int) -> str:
        return str(class_names[k]) if class_names is not None else str(k)

    rows = []
    for i in range(n):
        parts = [] if labels is None else [f"true {name(int(labels[i]))}"]
        parts.append(f"pred {name(int(predicted[i]))}")
        if int(target[i]) != int(predicted[i]):
            parts.append(f"expl. {name(int(target[i]))}")
        rows.append("\n".join(parts))
    return rows


def _sums(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).sum(axis=1)


def _title(model: Any, what: str) -> str:
    source = Path(model.source).name if model.source else "model"
    return f"{source} — {what}"


def _target_text(target: object) -> str:
    return "the predicted class's logit" if target is None else f"output {target}"
