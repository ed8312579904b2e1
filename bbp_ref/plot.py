"""Pictures of explanations: the paper's two figures (docs/reproduction.md, Claim 2).

`attribution_figure` draws the poster's "Examples of attribution results": one row per
input, labelled with its true (if given) and predicted class, and the columns

    input | norm. grad. | grad. x input | norm. IG | IG attrib. |
    norm. bias.k | bias.k attrib.   for each BBp rule (abs, signed, uniform = bias.1, 2, 3)

`layer_figure` draws the poster's "Bias attribution of various layers": the input, then
for each layer with a bias the BBp attribution of that layer's bias alone
(``explain(..., layers=[name])``), then of all biases together.

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
* Inputs with channels: the maps are summed over the channel axis; a 1-channel input is
  drawn in grey, a 3-channel one as RGB (rescaled to [0, 1]); a flat input whose length
  is a square number is drawn as a square image.

matplotlib is imported only when a figure is drawn (`MissingDependencyError`, an
`InputError`, if it is not installed). Figures are built as ``matplotlib.figure.Figure``
objects without pyplot, so no GUI backend or global state is involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .experiments.maps import POSTER_NAMES, RULES, attribution_maps, layer_maps
from .experiments.optional import require
from .model import load

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CMAP = "RdBu_r"
INPUT_CMAP = "gray"
PANEL_INCHES = 1.0
DPI = 100

INPUT, NORMALISED, ATTRIBUTION = "input", "normalised", "attribution"


@dataclass(frozen=True)
class Column:
    """One column of a figure: a title, the maps of every row (``[N, *input]`` as the model
    takes them), the kind of panel (``"input"``, ``"normalised"`` or ``"attribution"``) and,
    for attribution columns, the sum of each row's map printed under it."""

    title: str
    maps: np.ndarray
    kind: str
    sums: np.ndarray | None = None


def attribution_figure(model: object, x: object, labels: Sequence[int] | np.ndarray | None = None,
                       target: object = None, rules: Sequence[str] = RULES,
                       class_names: Sequence[str] | None = None, ig_baseline: float = 0.0,
                       ig_method: str = "exact", ig_steps: int = 50,
                       title: str | None = None) -> Figure:
    """The poster's attribution grid for the inputs ``x`` (one example or a batch) of
    ``model``; ``labels``: their true classes (optional); ``target``: the explained output
    (default: the predicted class); ``rules``: the BBp rules to show. See the module for
    what each panel shows."""
    m = load(model)
    maps = attribution_maps(m, x, target=target, rules=rules, ig_baseline=ig_baseline,
                            ig_method=ig_method, ig_steps=ig_steps)
    n = len(maps.x)
    columns = [Column("input", maps.x, INPUT),
               Column("norm.\ngrad.", normalise(maps.gradient), NORMALISED),
               Column("grad.\n× input", maps.gradient_x_input, ATTRIBUTION,
                      _sums(maps.gradient_x_input)),
               Column("norm.\nIG", normalise(maps.integrated_gradients), NORMALISED),
               Column("IG\nattrib.", maps.integrated_gradients, ATTRIBUTION,
                      _sums(maps.integrated_gradients))]
    for rule in rules:
        name = POSTER_NAMES.get(rule, rule)
        b = maps.bias_attribution[rule]
        columns.append(Column(f"norm. {name}\n({rule})", normalise(b), NORMALISED))
        columns.append(Column(f"{name} attrib.\n({rule})", b, ATTRIBUTION, _sums(b)))
    rows = row_labels(maps.predicted, maps.target, labels, class_names, n)
    note = ("norm. = map / max|map| per input;  attrib. = contribution to the explained "
            "logit (Σ under each panel):  grad.×input sums to W^x x,  IG (baseline "
            f"{ig_baseline:g}, {maps.ig_method}) to f(x) − f(baseline),  bias.k to b^x")
    return draw_grid(columns, rows, title or _title(m, "explained: " + _target_text(target)),
                     note)


def layer_figure(model: object, x: object, labels: Sequence[int] | np.ndarray | None = None,
                 target: object = None, rule: str = "abs", layers: Sequence[str] | None = None,
                 class_names: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """The poster's per-layer view: for each layer with a bias (or each of ``layers``),
    the BBp attribution (``rule``) of that layer's bias alone, and of all biases."""
    m = load(model)
    lm = layer_maps(m, x, target=target, rule=rule, layers=layers)
    n = len(lm.x)
    columns = [Column("input", lm.x, INPUT)]
    for name, op in lm.layers:
        columns.append(Column(f"{_short(name, op)}\n({op})", lm.attribution[name], ATTRIBUTION,
                              lm.contribution[name]))
    columns.append(Column("all biases\n(= B(x))", lm.total, ATTRIBUTION, _sums(lm.total)))
    rows = row_labels(lm.predicted, lm.target, labels, class_names, n)
    note = (f"BBp rule {rule} ({POSTER_NAMES.get(rule, rule)}); each column: the attribution "
            "of one layer's bias alone (layers=[name]); Σ = that layer's share of b^x")
    return draw_grid(columns, rows, title or _title(m, "bias attribution per layer, "
                                                       "explained: " + _target_text(target)),
                     note)


def explain_plot(model: object, x: object, out_path: str | Path,
                 labels: Sequence[int] | np.ndarray | None = None, target: object = None,
                 rule: str = "abs", layers: Sequence[str] | None = None,
                 layers_out_path: str | Path | None = None, ig_method: str = "exact",
                 dpi: int = DPI) -> list[Path]:
    """Write `attribution_figure` of ``x`` to ``out_path`` (PNG, SVG, PDF, by its suffix)
    and, if ``layers_out_path`` is given, `layer_figure` (BBp ``rule``, ``layers``) to it.
    Returns the paths written."""
    m = load(model)
    figure = attribution_figure(m, x, labels=labels, target=target, ig_method=ig_method)
    written = [save(figure, out_path, dpi)]
    if layers_out_path is not None:
        written.append(save(layer_figure(m, x, labels=labels, target=target, rule=rule,
                                         layers=layers), layers_out_path, dpi))
    return written


def save(figure: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``figure`` to ``path`` (`InputError` if it cannot be written)."""
    out = Path(path)
    try:
        figure.savefig(out, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the figure to {out}: {exc}") from exc
    return out


# -- the drawing -----------------------------------------------------------------------


def draw_grid(columns: Sequence[Column], rows: Sequence[str], title: str = "",
              note: str = "") -> Figure:
    """A figure of ``len(rows)`` x ``len(columns)`` panels (see the module for the colour
    conventions): column titles on top, row labels on the left, a colour bar under each
    column, ``title`` above and ``note`` below. The layout is fixed in inches (no layout
    engine), so it is fast and nothing overlaps. Axes are labelled ``"panel i j"`` (row
    ``i``, column ``j``) and ``"colour bar j"``."""
    require("matplotlib", "matplotlib")
    from matplotlib.figure import Figure

    n, k = len(rows), len(columns)
    for column in columns:
        if len(column.maps) != n:
            raise InputError(f"column {column.title!r} has {len(column.maps)} maps for "
                             f"{n} rows")
    lines = max(c.title.count("\n") + 1 for c in columns) if columns else 1
    box = _Layout(n, k, bool(title), bool(note), lines)
    fig = Figure(figsize=(box.width, box.height))
    for j, column in enumerate(columns):
        images, style = _display(column)
        for i in range(n):
            ax = fig.add_axes(box.panel(i, j), label=f"panel {i} {j}")
            image = ax.imshow(images[i], aspect="auto", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column.title, fontsize=8, pad=3)
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
            if column.sums is not None:
                ax.set_xlabel(f"Σ = {column.sums[i]:+.3g}", fontsize=7, labelpad=1)
        cax = fig.add_axes(box.colour_bar(j), label=f"colour bar {j}")
        _colour_bar(fig, image, cax, style["vmin"], style["vmax"])
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / box.height, va="top", wrap=True)
    if note:
        fig.supxlabel(note, fontsize=7, y=0.06 / box.height, va="bottom", wrap=True)
    return fig


class _Layout:
    """Positions (figure fractions) of the panels and colour bars of an ``n`` x ``k``
    grid, from fixed sizes in inches."""

    PANEL, HGAP, VGAP = PANEL_INCHES, 0.14, 0.3
    LEFT, RIGHT, TITLE, TITLE_LINE = 0.55, 0.15, 0.32, 0.14
    BAR_GAP, BAR, BAR_LABELS, NOTE = 0.3, 0.09, 0.2, 0.34

    def __init__(self, n: int, k: int, title: bool, note: bool, title_lines: int) -> None:
        self.top = (self.TITLE if title else 0.1) + self.TITLE_LINE * title_lines + 0.1
        self.bottom = self.BAR_LABELS + (self.NOTE if note else 0.05)
        self.width = self.LEFT + k * self.PANEL + (k - 1) * self.HGAP + self.RIGHT
        self.height = (self.top + n * self.PANEL + (n - 1) * self.VGAP + self.BAR_GAP
                       + self.BAR + self.bottom)

    def _box(self, left: float, top: float, w: float,
             h: float) -> tuple[float, float, float, float]:
        """``[x0, y0, w, h]`` in figure fractions of a box given in inches from the
        figure's left and top edges."""
        return (left / self.width, 1 - (top + h) / self.height, w / self.width,
                h / self.height)

    def _left(self, j: int) -> float:
        return self.LEFT + j * (self.PANEL + self.HGAP)

    def panel(self, i: int, j: int) -> tuple[float, float, float, float]:
        top = self.top + i * (self.PANEL + self.VGAP)
        return self._box(self._left(j), top, self.PANEL, self.PANEL)

    def colour_bar(self, j: int) -> tuple[float, float, float, float]:
        top = self.height - self.bottom - self.BAR
        inset = 0.05 * self.PANEL
        return self._box(self._left(j) + inset, top, self.PANEL - 2 * inset, self.BAR)


def _colour_bar(fig: Figure, image: Any, cax: Any, low: float, high: float) -> None:
    """A horizontal colour bar in ``cax`` with ticks at both ends and the middle, the
    end labels aligned inwards so that neighbouring bars' labels never touch."""
    bar = fig.colorbar(image, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    middle = (low + high) / 2
    bar.set_ticks([low, middle, high])
    labels = bar.ax.set_xticklabels([f"{low:.2g}", "0" if middle == 0 else f"{middle:.2g}",
                                     f"{high:.2g}"])
    labels[0].set_horizontalalignment("left")
    labels[-1].set_horizontalalignment("right")


def _display(column: Column) -> tuple[np.ndarray, dict[str, Any]]:
    """The images of a column and their `imshow` style (colour map and limits)."""
    if column.kind == INPUT:
        images = to_images(column.maps, rgb=True)
        low, high = float(images.min()), float(images.max())
        if images.ndim == 4:  # RGB, rescaled to [0, 1] per image
            span = images.reshape(len(images), -1)
            lo = span.min(axis=1)[:, None, None, None]
            hi = span.max(axis=1)[:, None, None, None]
            images = (images - lo) / np.where(hi > lo, hi - lo, 1.0)
            low, high = 0.0, 1.0
        return images, {"cmap": INPUT_CMAP, "vmin": low, "vmax": high if high > low
                        else low + 1.0, "interpolation": "nearest"}
    if column.kind not in (NORMALISED, ATTRIBUTION):
        raise InputError(f"unknown column kind {column.kind!r}")
    images = to_images(column.maps, rgb=False)
    limit = 1.0 if column.kind == NORMALISED else symmetric_limit(images)
    return images, {"cmap": CMAP, "vmin": -limit, "vmax": limit, "interpolation": "nearest"}


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
    """A batch of per-example arrays shaped like the model input as drawable images:
    ``[N, H, W]``, or ``[N, H, W, 3]`` for a 3-channel input when ``rgb``. Maps with
    channels (``[N, C, H, W]``) are summed over ``C`` otherwise; a flat input whose length
    is a square is made square, any other flat input a one-row strip."""
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        return a.reshape(len(a), side, side) if side * side == a.shape[1] else a[:, None, :]
    if a.ndim == 3:
        return a
    if a.ndim == 4:
        if rgb and a.shape[1] == 3:
            return a.transpose(0, 2, 3, 1)
        return a.sum(axis=1)
    raise InputError(f"cannot draw inputs of shape {list(a.shape[1:])}: a picture needs a "
                     "flat, [H, W] or [C, H, W] input")


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


def _short(name: str, op: str, width: int = 16) -> str:
    """A layer name that fits a column title: whole if short, else its trailing path
    components (without a last one that only repeats the op, shown below it)."""
    if len(name) <= width:
        return name
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1] == op:
        parts.pop()
    kept: list[str] = []
    while parts and len("…/" + "/".join([parts[-1], *kept])) <= width:
        kept.insert(0, parts.pop())
    if not kept:
        return "…" + name[-(width - 1):]
    return ("…/" if parts else "") + "/".join(kept)


def _title(model: Any, what: str) -> str:
    source = Path(model.source).name if model.source else "model"
    return f"{source} — {what}"


def _target_text(target: object) -> str:
    return "the predicted class's logit" if target is None else f"output {target}"
