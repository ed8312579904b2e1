"""Regenerate the golden vectors of the models under models/ into models/golden/:
`python tools/make_golden.py` (or `--out DIR` for another folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bbp_ref.checks.oracle import STANDARD_FIELDS, GoldenCase, golden

ROOT = Path(__file__).resolve().parent.parent
TORCH_MODELS = ("mlp.ts9", "cnn.ts17", "resnet_block.dynamo", "conv_variants.ts13",
                "concat_branches.dynamo_noopt", "conv1d.ts17", "conv3d.dynamo",
                "softmax_head.ts13")
FIELDS = (*STANDARD_FIELDS, "integrated_gradients", "deeplift")


def cases() -> list[GoldenCase]:
    def npy(path: Path) -> np.ndarray:
        return np.load(path, allow_pickle=False)

    found = [GoldenCase("digits_cnn", ROOT / "bbp_ref" / "data" / "digits_cnn.onnx",
                        npy(ROOT / "bbp_ref" / "data" / "digits_cnn.sample.npy")),
             GoldenCase("digits_mlp", ROOT / "models" / "sklearn" / "digits_mlp.onnx",
                        npy(ROOT / "models" / "sklearn" / "digits_mlp.input.npy"))]
    for name in TORCH_MODELS:
        stem = name.split(".")[0]
        found.append(GoldenCase(name, ROOT / "models" / "torch" / f"{name}.onnx",
                                npy(ROOT / "models" / "torch" / f"{stem}.input.npy")))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "models" / "golden"))
    args = parser.parse_args()
    print(golden(cases(), args.out, FIELDS))


if __name__ == "__main__":
    main()
