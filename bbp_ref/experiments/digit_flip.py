"""Claim 3 of the paper: the digit-flip test (docs/reproduction.md), the masking test of
DeepLIFT (Shrikumar et al. 2017, §4.2) as the poster uses it:

    bbp-ref digit-flip [--models DIR] [--model-names cnn_bias mlp_bias] [--data test|all]
        [--pairs 8:3 8:6 4:9 9:4] [--limit N] [--out DIR] [--no-figures] [--progress]
        [--quiet] [--seed 0] [--dpi N]

(the models default to the ones shipped with the package, the box plots go into a new
folder ``bbp-ref-digit-flip`` in the current directory unless ``--out`` says otherwise)

For each correctly classified image of a source digit `o` and a target digit `t`, with
`S_c[i]` a method's attribution of pixel `i` for the logit of class `c`:

1. `S_diff[i] = S_o[i] - S_t[i]`;
2. erase (set to 0, the background of these digits and the baseline of IG and DeepLIFT)
   the pixels with `S_diff > 0`, in descending order of `S_diff` (ties: lower pixel index
   first), at most `pixel_budget` of them: 20 % of the pixels, rounded to the nearest
   integer as the paper's 157 of 784 is (13 of 64);
3. the log-odds of `o` against `t` are `f_o - f_t`, the difference of the logits (the log of
   the ratio of the two softmax probabilities); the score is the change
   `(f_o - f_t)(x) - (f_o - f_t)(x_erased)`: larger means the method found the pixels that
   make the image an `o` rather than a `t`.

Methods (`METHODS`): a random order (`RANDOM_SEED`, the full budget erased), gradient x
input, integrated gradients (exact, from the black image), DeepLIFT (Rescale, from the
black image), the BBp bias attribution `B(x)` for each rule, and gradient x input plus
`B(x)` for each rule (the complete decomposition `W^x[c] x + B(x) = f_c(x)`). Every
attribution is float64 and computed for a whole batch at once; results are reported as
means with a 95 % Student-t confidence interval, and drawn as box plots.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..attribution.baselines import deeplift, gradient_x_input
from ..attribution.integrated_gradients import integrated_gradients
from ..errors import InputError
from ..explain import explain
from ..model import Model, load
from ..outputs import out_folder
from ..progress import Progress
from .digits import digits_split, models_dir
from .maps import POSTER_NAMES, RULES
from .optional import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: (source, target) digits: the DeepLIFT paper's and the poster's four flips.
PAIRS = ((8, 3), (8, 6), (4, 9), (9, 4))
FRACTION = 0.2
ERASED_VALUE = 0.0
CONFIDENCE = 0.95
RANDOM_SEED = 0
#: Method key -> label in the tables and figures (bias.1, 2, 3 are the poster's names).
METHODS = {
    "random": "random order",
    "gradient_x_input": "grad. × input",
    "integrated_gradients": "IG (exact, black baseline)",
    "deeplift": "DeepLIFT (Rescale, black baseline)",
    **{f"bbp_{rule}": f"BBp {rule} ({POSTER_NAMES[rule]})" for rule in RULES},
    **{f"gradient_x_input+bbp_{rule}": f"grad. × input + BBp {rule}" for rule in RULES},
}
DEFAULT_MODELS = ("cnn_bias", "mlp_bias")
OUT_STEM = "bbp-ref-digit-flip"
DATA = ("test", "all")
CHUNK = 32  # (image, class) rows per attribution call (the progress bar's step)


@dataclass(frozen=True)
class FlipResult:
    """The test for one model, pair and method over ``n`` images.

    ``indices``: the images (rows of the data); ``before``/``after``: the log-odds
    `f_o - f_t` of the image and of the erased image ``[n]``; ``erased``: pixels chosen per
    image; ``changed``: of those, the pixels that were not already 0.
    """

    model: str
    source: int
    target: int
    method: str
    indices: np.ndarray
    before: np.ndarray
    after: np.ndarray
    erased: np.ndarray
    changed: np.ndarray

    @property
    def change(self) -> np.ndarray:
        """The change in log-odds per image, before minus after."""
        return self.before - self.after

    @property
    def n(self) -> int:
        return len(self.indices)

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
        """The mean change and its Student-t confidence interval (`mean_interval`)."""
        return mean_interval(self.change, confidence)


def mean_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float,
                                                                              float]:
    """``(mean, low, high)``: the mean of ``values`` and the two-sided Student-t interval
    `mean ± t_{(1+confidence)/2, n-1} s / sqrt(n)` (`s` the sample standard deviation).
    NaN where undefined (no values; the interval for one value)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if len(data) == 1:
        return mean, math.nan, math.nan
    stats = require("scipy.stats", "scipy")
    half = float(stats.t.ppf((1 + confidence) / 2, len(data) - 1)
                 * data.std(ddof=1) / math.sqrt(len(data)))
    return mean, mean - half, mean + half


def pixel_budget(n_pixels: int, fraction: float = FRACTION) -> int:
    """The most pixels erased: ``fraction`` of them, rounded half up (the DeepLIFT paper's
    157 of 784 MNIST pixels; 13 of 64 here)."""
    return math.floor(fraction * n_pixels + 0.5)


def erase_mask(score_diff: np.ndarray, budget: int) -> np.ndarray:
    """Which pixels to erase, for a batch of flattened `S_diff` ``[N, P]``: the ``budget``
    largest values among those > 0 (ties: the lower pixel index first)."""
    order = np.argsort(-score_diff, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(score_diff.shape[1])[None, :], axis=1)
    return (rank < budget) & (score_diff > 0)


def class_attributions(model: Model, x: np.ndarray, targets: np.ndarray,
                       methods: Iterable[str]) -> dict[str, np.ndarray]:
    """Each method's attribution of the logit ``targets[i]`` for example ``x[i]`` of the
    batch (float64, flattened to ``[N, P]``); ``"random"`` is left out (it needs none)."""
    n = len(x)
    wanted = set(methods)
    out: dict[str, np.ndarray] = {}
    if any(m.startswith("gradient_x_input") for m in wanted):
        out["gradient_x_input"] = gradient_x_input(model, x, target=targets).attribution
    if "integrated_gradients" in wanted:
        out["integrated_gradients"] = integrated_gradients(
            model, x, baselines=0.0, target=targets, method="exact").attribution
    if "deeplift" in wanted:
        out["deeplift"] = deeplift(model, x, baselines=0.0, target=targets).attribution
    rules = [rule for rule in RULES
             if f"bbp_{rule}" in wanted or f"gradient_x_input+bbp_{rule}" in wanted]
    if rules:  # one forward trace and one reverse pass for all the rules
        explanations = explain(model, x, target=targets, rule=rules, check=False)
        for rule, e in zip(rules, explanations):
            out[f"bbp_{rule}"] = e.bias_attribution
            if f"gradient_x_input+bbp_{rule}" in wanted:
                out[f"gradient_x_input+bbp_{rule}"] = (out["gradient_x_input"]
                                                       + e.bias_attribution)
    return {m: out[m].reshape(n, -1) for m in wanted if m != "random"}


def digit_flip(model: object, X: object, y: object, pairs: Sequence[tuple[int, int]] = PAIRS,
               methods: Sequence[str] = tuple(METHODS), fraction: float = FRACTION,
               limit: int | None = None, seed: int = RANDOM_SEED, name: str = "model",
               progress: Progress | None = None) -> list[FlipResult]:
    """The digit-flip test (see the module) of ``model`` on images ``X`` ``[N, 1, 8, 8]``
    with labels ``y``, for each ``(source, target)`` of ``pairs`` and each method.

    The images of a pair are the correctly classified images of its source class, in data
    order (the first ``limit`` of them if given). The random order of an image is drawn
    from `numpy.random.default_rng((seed, source))`, the same for every target. Returns one
    `FlipResult` per pair and method, in that order. ``progress`` ticks once per image and
    explained class.
    """
    m = load(model)
    data, labels = _check_data(m, X, y)
    _check_pairs(pairs)
    unknown = [k for k in methods if k not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown methods {unknown}; known: {list(METHODS)}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be positive, got {limit}")
    width = int(np.prod(data.shape[1:]))
    budget = pixel_budget(width, fraction)
    predicted = m.forward(data).reshape(len(data), -1).argmax(axis=1)
    chosen = {}
    for source in dict.fromkeys(s for s, _ in pairs):
        rows = np.flatnonzero((labels == source) & (predicted == source))
        chosen[source] = rows if limit is None else rows[:limit]
    scores = _scores(m, data, chosen, pairs, [k for k in methods if k != "random"], progress)
    results = []
    for source, target in pairs:
        rows = chosen[source]
        x = data[rows]
        flat = x.reshape(len(x), width)
        keys = 1.0 - np.random.default_rng((seed, source)).random(flat.shape)  # in (0, 1]
        diffs = np.stack([keys if k == "random" else
                          scores[source, source][k] - scores[source, target][k]
                          for k in methods])                      # [methods, n, P]
        masks = erase_mask(diffs.reshape(-1, width), budget).reshape(diffs.shape)
        erased = np.where(masks, ERASED_VALUE, flat[None]).reshape(-1, *x.shape[1:])
        odds = np.zeros((len(methods) + 1, 0))
        if len(x):
            logits = m.forward(np.concatenate([x, erased])).reshape(len(methods) + 1,
                                                                     len(x), -1)
            odds = logits[..., source] - logits[..., target]
        for k, method in enumerate(methods):
            results.append(FlipResult(
                model=name, source=source, target=target, method=method, indices=rows,
                before=odds[0], after=odds[k + 1], erased=masks[k].sum(axis=1),
                changed=(masks[k] & (flat != ERASED_VALUE)).sum(axis=1)))
    return results


def _scores(model: Model, data: np.ndarray, chosen: Mapping[int, np.ndarray],
            pairs: Sequence[tuple[int, int]], methods: Sequence[str],
            progress: Progress | None) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """``(source, class) -> method -> [n, P]``: the attributions of the logit ``class`` for
    the chosen images of ``source``, for every class a pair needs. All (image, class)
    rows are explained together, ``CHUNK`` at a time (one call per method and chunk, so
    the per-call costs are shared; the progress bar ticks after each chunk)."""
    needed = list(dict.fromkeys((s, c) for s, t in pairs for c in (s, t)))
    rows = np.concatenate([chosen[s] for s, _ in needed])
    targets = np.concatenate([np.full(len(chosen[s]), c) for s, c in needed])
    if progress is not None:
        progress.add(len(rows))
    parts = []
    for start in range(0, len(rows), CHUNK):
        part = slice(start, start + CHUNK)
        parts.append(class_attributions(model, data[rows[part]], targets[part], methods))
        if progress is not None:
            progress.update(len(rows[part]))
    width = int(np.prod(data.shape[1:]))
    every = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0, width))
             for k in methods}
    bounds = np.cumsum([0] + [len(chosen[s]) for s, _ in needed])
    return {key: {k: every[k][bounds[i]:bounds[i + 1]] for k in methods}
            for i, key in enumerate(needed)}


def _check_data(model: Model, X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    data, _ = model.prepare(X)
    labels = np.asarray(y)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"y must be {len(data)} integer labels, got shape "
                         f"{list(labels.shape)} and dtype {labels.dtype}")
    return data, labels


def _check_pairs(pairs: Sequence[tuple[int, int]]) -> None:
    if not pairs:
        raise InputError("no (source, target) pairs given")
    for source, target in pairs:
        if source == target or not (0 <= source <= 9 and 0 <= target <= 9):
            raise InputError(f"a pair must be two different digits 0-9, got {source}:{target}")
    if len(set(pairs)) != len(pairs):
        raise InputError(f"pairs repeat: {list(pairs)}")


# -- reporting -------------------------------------------------------------------------


def format_table(results: Sequence[FlipResult], confidence: float = CONFIDENCE) -> str:
    """A Markdown table for one model: a column per pair (``n`` in its head); a first row
    with the log-odds `f_o - f_t` before erasing, then a row per method, each cell the mean
    change in log-odds and its confidence interval."""
    pairs, methods, cell = _grid(results)
    rows = _head(pairs, methods, cell)
    rows.append("| *log-odds before erasing* | " + " | ".join(
        _cell(mean_interval(cell[pair, methods[0]].before, confidence)) for pair in pairs)
        + " |")
    for method in methods:
        rows.append(f"| {METHODS[method]} | " + " | ".join(
            _cell(cell[pair, method].interval(confidence)) for pair in pairs) + " |")
    return "\n".join(rows)


def format_paired(results: Sequence[FlipResult], reference: str = "gradient_x_input",
                  confidence: float = CONFIDENCE) -> str:
    """A Markdown table of each method's change in log-odds minus ``reference``'s on the
    same images: the mean paired difference and its confidence interval (narrower than the
    two methods' own intervals suggest, since the images are shared)."""
    pairs, methods, cell = _grid(results)
    if reference not in methods:
        raise InputError(f"the reference method {reference!r} was not run")
    rows = _head(pairs, methods, cell)
    for method in methods:
        if method != reference:
            rows.append(f"| {METHODS[method]} | " + " | ".join(
                _cell(mean_interval(cell[pair, method].change - cell[pair, reference].change,
                                    confidence)) for pair in pairs) + " |")
    return "\n".join(rows)


def format_erased(results: Sequence[FlipResult]) -> str:
    """A Markdown table of the mean number of pixels erased per image (of which not already
    0) for each method and pair."""
    pairs, methods, cell = _grid(results)
    rows = _head(pairs, methods, cell)
    for method in methods:
        rows.append(f"| {METHODS[method]} | " + " | ".join(
            "—" if cell[pair, method].n == 0 else
            f"{cell[pair, method].erased.mean():.1f} ({cell[pair, method].changed.mean():.1f})"
            for pair in pairs) + " |")
    return "\n".join(rows)


Grid = tuple[list[tuple[int, int]], list[str], dict[tuple[tuple[int, int], str], FlipResult]]


def _grid(results: Sequence[FlipResult]) -> Grid:
    """The pairs and methods of ``results`` in order, and (pair, method) -> result."""
    if not results:
        raise InputError("no results to report")
    pairs = list(dict.fromkeys((r.source, r.target) for r in results))
    methods = list(dict.fromkeys(r.method for r in results))
    return pairs, methods, {((r.source, r.target), r.method): r for r in results}


def _head(pairs: list[tuple[int, int]], methods: list[str],
          cell: Mapping[tuple[tuple[int, int], str], FlipResult]) -> list[str]:
    head = [f"{s}→{t} (n={cell[(s, t), methods[0]].n})" for s, t in pairs]
    return ["| method | " + " | ".join(head) + " |",
            "| --- | " + " | ".join("---:" for _ in pairs) + " |"]


def _cell(interval: tuple[float, float, float]) -> str:
    mean, low, high = interval
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if math.isnan(low) else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


MEDIAN_STYLE: dict[str, Any] = {"color": "C1", "linewidth": 1.5}
MEAN_STYLE: dict[str, Any] = {"marker": "^", "markerfacecolor": "C2", "markeredgecolor": "C2",
                              "markersize": 5}


def box_plot(results: Sequence[FlipResult], title: str = "") -> Figure:
    """Box plots of the change in log-odds: one panel per pair, one box per method (the
    box spans the quartiles, a line at the median, whiskers 1.5 IQR, a triangle at the
    mean), with a legend for these marks under the panels."""
    matplotlib = require("matplotlib", "matplotlib")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pairs, methods, cell = _grid(results)
    fig = Figure(figsize=(2.6 * len(pairs) + 2.2, 0.32 * len(methods) + 1.8))
    axes = fig.subplots(1, len(pairs), sharey=True, squeeze=False)[0]
    positions = np.arange(len(methods), 0, -1)  # the first method on top
    horizontal = ({"orientation": "horizontal"}
                  if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})
    for ax, pair in zip(axes, pairs):
        data = [cell[pair, method].change for method in methods]
        ax.boxplot(data, positions=positions, widths=0.6, showmeans=True,
                   flierprops={"markersize": 2}, medianprops=MEDIAN_STYLE,
                   meanprops=MEAN_STYLE, **horizontal)
        ax.axvline(0.0, color="grey", linewidth=0.6, zorder=0)
        ax.set_title(f"{pair[0]} → {pair[1]} (n={cell[pair, methods[0]].n})", fontsize=9)
        ax.set_xlabel("change in log-odds", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", linewidth=0.3)
    axes[0].set_yticks(positions, [METHODS[m] for m in methods])
    legend = [Line2D([], [], label="median", **MEDIAN_STYLE),
              Line2D([], [], linestyle="none", label="mean", **MEAN_STYLE),
              Patch(facecolor="white", edgecolor="black", linewidth=0.8,
                    label="quartiles (whiskers: 1.5 × IQR; dots: beyond)")]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    width, height = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(left=2.2 / width, right=1 - 0.15 / width, bottom=1.15 / height,
                        top=1 - 0.55 / height, wspace=0.08)
    return fig


# -- the command -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (shared by ``python -m`` and ``bbp-ref digit-flip``)."""
    parser.add_argument("--models", metavar="DIR",
                        help="folder of the models (default: the digits models shipped with "
                        "the package)")
    parser.add_argument("--model-names", nargs="+", default=list(DEFAULT_MODELS),
                        metavar="NAME", help="models (NAME.onnx in --models) to test")
    parser.add_argument("--data", choices=DATA, default="test",
                        help="the test split or all 1,797 images (train then test)")
    parser.add_argument("--pairs", nargs="+", default=[f"{s}:{t}" for s, t in PAIRS],
                        metavar="SOURCE:TARGET", help="digit pairs")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N correct images of each source digit")
    parser.add_argument("--out", "--images", dest="out", metavar="DIR",
                        help=f"folder for the box plots (default: a new folder {OUT_STEM} in "
                        "the current directory)")
    parser.add_argument("--no-figures", action="store_true", help="only the tables")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="show the progress bar on stderr even if it is not a terminal")
    shown.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--dpi", type=int, default=100, metavar="N",
                        help="resolution of the PNG box plots (default 100)")
    parser.add_argument("--seed", type=int, default=RANDOM_SEED,
                        help="seed of the random order")


def parse_pairs(texts: Sequence[str]) -> list[tuple[int, int]]:
    """``["8:3", ...]`` as ``[(8, 3), ...]`` (`InputError` if malformed)."""
    pairs = []
    for text in texts:
        parts = text.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise InputError(f"a pair is SOURCE:TARGET, e.g. 8:3, got {text!r}")
        pairs.append((int(parts[0]), int(parts[1])))
    _check_pairs(pairs)
    return pairs


def run(args: argparse.Namespace,
        out: Callable[[str], None] = print) -> dict[str, list[FlipResult]]:
    """Run the command for parsed ``args``: print the tables and timings, write the
    figures; return the results per model."""
    pairs = parse_pairs(args.pairs)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be positive, got {args.limit}")
    folder = Path(args.models) if args.models is not None else models_dir()
    paths = {name: folder / f"{name}.onnx" for name in args.model_names}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"model file not found: {', '.join(missing)}")
    split = digits_split()
    if args.data == "test":
        X, y = split.X_test, split.y_test
    else:
        X = np.concatenate([split.X_train, split.X_test])
        y = np.concatenate([split.y_train, split.y_test])
    every: dict[str, list[FlipResult]] = {}
    images: Path | None = None
    for name, path in paths.items():
        start = time.perf_counter()
        shown = True if args.progress else False if args.quiet else None
        progress = Progress(f"digit flip {name}", enabled=shown)
        try:
            results = digit_flip(path, X, y, pairs=pairs, limit=args.limit, seed=args.seed,
                                 name=name, progress=progress)
        finally:
            progress.close()
        every[name] = results
        subset = ("" if args.limit is None else
                  f", the first {args.limit} correct of each source digit")
        out(f"\n{name}, {args.data} images{subset}: change in log-odds (mean "
            f"[{CONFIDENCE:.0%} CI])\n")
        out(format_table(results))
        if "gradient_x_input" in {r.method for r in results}:
            out("\nminus grad. × input on the same images (mean [CI]):\n")
            out(format_paired(results))
        out("\npixels erased per image (of them, not already 0):\n")
        out(format_erased(results))
        out(f"\n{name}: {time.perf_counter() - start:.1f} s")
        if not args.no_figures:
            from ..plot import save

            if images is None:
                images = out_folder(args.out, OUT_STEM)
            suffix = "" if args.data == "test" else f"_{args.data}"
            title = f"digit-flip test, {name}, {args.data} images"
            path_out = save(box_plot(results, title), images / f"digit_flip_{name}{suffix}.png",
                            args.dpi)
            out(f"wrote {path_out}")
    return every


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bbp_ref.experiments.digit_flip",
        description="Claim 3, the digit-flip test, on the digits models.")
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
