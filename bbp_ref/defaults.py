"""The embedded default model (a small CNN trained on scikit-learn's digits) and its
sample input, shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "digits_cnn.onnx"
DEFAULT_SAMPLE = "digits_cnn.sample.npy"


def default_model_path() -> Path:
    return Path(str(resources.files("bbp_ref") / "data" / DEFAULT_MODEL))


def default_input() -> np.ndarray:
    """One digit image, [1, 8, 8] float32, that the default model classifies right."""
    return np.load(Path(str(resources.files("bbp_ref") / "data" / DEFAULT_SAMPLE)),
                   allow_pickle=False)
