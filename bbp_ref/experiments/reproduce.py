"""Reproduce the paper's Claim 1 table and Claim 2 figures on the digits models of
`models/digits/` (docs/reproduction.md):

    python -m bbp_ref.experiments.reproduce [--models models/digits] [--images docs/images]
                                            [--no-figures]

Prints the Claim 1 table (the poster's rows, then the digits MLP and CNN, test split)
with the time each step took, and writes the figures as PNG files.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .bias_importance import BiasImportance, print_table
from .digits import digits_split

MODELS = {"MLP": "mlp", "CNN": "cnn"}
#: Test images drawn in the figures: the first correctly classified test image of the
#: classes 0, 3, 5 and 7, then one the biased CNN gets right only thanks to its bias
#: (argmax W^x x is wrong) and one it gets wrong only because of it (argmax W^x x is right).
FIGURE_INDICES = (17, 36, 9, 5, 167, 213)
FIGURE_MODEL = "cnn_bias"


def claim1(models_dir: str | Path = "models/digits") -> dict[str, BiasImportance]:
    """Claim 1 on the digits test split for each architecture (biased vs bias-free)."""
    from .bias_importance import bias_importance

    folder = Path(models_dir)
    split = digits_split()
    return {f"digits {label} (this project)": bias_importance(
                folder / f"{stem}_bias.onnx", folder / f"{stem}_nobias.onnx",
                split.X_test, split.y_test)
            for label, stem in MODELS.items()}


def render_figures(models_dir: str | Path = "models/digits",
                   out_dir: str | Path = "docs/images",
                   indices: Sequence[int] = FIGURE_INDICES) -> list[Path]:
    """The attribution grid and the per-layer figure of the biased digits CNN."""
    from .. import plot

    split = digits_split()
    rows = list(indices)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return plot.explain_plot(
        Path(models_dir) / f"{FIGURE_MODEL}.onnx", split.X_test[rows],
        out / f"digits_{FIGURE_MODEL}_attributions.png", labels=split.y_test[rows],
        layers_out_path=out / f"digits_{FIGURE_MODEL}_layers.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bbp_ref.experiments.reproduce",
        description="Claim 1 table and Claim 2 figures on the digits models.")
    parser.add_argument("--models", default="models/digits", help="folder of the models")
    parser.add_argument("--images", default="docs/images", help="folder for the figures")
    parser.add_argument("--no-figures", action="store_true", help="only the table")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print_table(claim1(args.models))
    print(f"Claim 1: {time.perf_counter() - start:.1f} s")
    if not args.no_figures:
        start = time.perf_counter()
        for path in render_figures(args.models, args.images):
            print(f"wrote {path}")
        print(f"Claim 2 figures: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
