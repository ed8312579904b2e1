"""Reproduce the paper's Claim 1 table and Claim 2 figures on the digits models shipped
with the package (`digits.models_dir`; docs/reproduction.md):

    bbp-ref reproduce [--models DIR] [--out DIR] [--no-figures] [--dpi N]

Prints the Claim 1 table (the poster's rows, then the digits MLP and CNN, test split)
with the time each step took, and writes the figures as PNG files into ``--out``
(default: a new folder ``bbp-ref-reproduce`` in the current directory).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..outputs import out_folder
from .bias_importance import BiasImportance, print_table
from .digits import digits_split, models_dir

MODELS = {"MLP": "mlp", "CNN": "cnn"}
#: Test images drawn in the figures: the first correctly classified test image of the
#: classes 0, 3, 5 and 7, then one the biased CNN gets right only thanks to its bias
#: (argmax W^x x is wrong) and one it gets wrong only because of it (argmax W^x x is right).
FIGURE_INDICES = (17, 36, 9, 5, 167, 213)
FIGURE_MODEL = "cnn_bias"
OUT_STEM = "bbp-ref-reproduce"


def claim1(models: str | Path | None = None) -> dict[str, BiasImportance]:
    """Claim 1 on the digits test split for each architecture (biased vs bias-free);
    ``models``: the folder of the digits models (default: the package's)."""
    from .bias_importance import bias_importance

    folder = Path(models) if models is not None else models_dir()
    split = digits_split()
    return {f"digits {label} (this project)": bias_importance(
                folder / f"{stem}_bias.onnx", folder / f"{stem}_nobias.onnx",
                split.X_test, split.y_test)
            for label, stem in MODELS.items()}


def render_figures(models: str | Path | None, out_dir: str | Path,
                   indices: Sequence[int] = FIGURE_INDICES, dpi: int | None = None) -> list[Path]:
    """The attribution grid (the poster's columns: gradient, exact IG, the three BBp
    rules) and the per-layer figure of the biased digits CNN, written into ``out_dir``."""
    from .. import plot

    split = digits_split()
    rows = list(indices)
    out = Path(out_dir)
    folder = Path(models) if models is not None else models_dir()
    return plot.explain_plot(
        folder / f"{FIGURE_MODEL}.onnx", split.X_test[rows],
        out / f"digits_{FIGURE_MODEL}_attributions.png", labels=split.y_test[rows],
        layers_out_path=out / f"digits_{FIGURE_MODEL}_layers.png",
        methods=plot.POSTER_METHODS, dpi=dpi or plot.DPI)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (shared by ``python -m`` and ``bbp-ref reproduce``)."""
    parser.add_argument("--models", metavar="DIR",
                        help="folder of the digits models (default: the ones shipped with "
                        "the package)")
    parser.add_argument("--out", "--images", dest="out", metavar="DIR",
                        help=f"folder for the figures (default: a new folder {OUT_STEM} in "
                        "the current directory)")
    parser.add_argument("--no-figures", action="store_true", help="only the table")
    parser.add_argument("--dpi", type=int, metavar="N",
                        help="resolution of the PNG figures (default 100)")


def run(args: argparse.Namespace) -> int:
    """Print the Claim 1 table and write the figures for parsed ``args``."""
    start = time.perf_counter()
    print_table(claim1(args.models))
    print(f"Claim 1: {time.perf_counter() - start:.1f} s")
    if not args.no_figures:
        start = time.perf_counter()
        for path in render_figures(args.models, out_folder(args.out, OUT_STEM),
                                   dpi=args.dpi):
            print(f"wrote {path}")
        print(f"Claim 2 figures: {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bbp_ref.experiments.reproduce",
        description="Claim 1 table and Claim 2 figures on the digits models.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
