"""The fixed scikit-learn digits split every experiment and digits model (`models_dir`)
uses: `load_digits` (8x8 images, 1,797 of them, shipped with scikit-learn), pixels
divided by 16 into [0, 1], `train_test_split(test_size=0.25, random_state=0)` (no
stratification): 1,347 training and 450 test images."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .optional import require

TEST_SIZE = 0.25
RANDOM_STATE = 0
IMAGE_SHAPE = (1, 8, 8)


class Split(NamedTuple):
    """Images float32 ``[N, 1, 8, 8]`` in [0, 1] and labels int64 ``[N]``."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def digits_split() -> Split:
    """The fixed train/test split of scikit-learn's digits (needs scikit-learn)."""
    datasets = require("sklearn.datasets", "scikit-learn")
    selection = require("sklearn.model_selection", "scikit-learn")
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, *IMAGE_SHAPE)
    X_tr, X_te, y_tr, y_te = selection.train_test_split(
        X, y, test_size=TEST_SIZE, random_state=RANDOM_STATE, stratify=None)
    return Split(X_tr, X_te, y_tr.astype(np.int64), y_te.astype(np.int64))


def models_dir() -> Path:
    """The folder of the four digits models shipped with the package (package data,
    ``bbp_ref/data/digits``; made by ``models/digits/make_digits_models.py``)."""
    return Path(str(resources.files("bbp_ref") / "data" / "digits"))
