"""Claim 1 of the paper, "the bias matters for the prediction" (the poster's table).

For a classifier `f(x) = W^x x + b^x` trained with biases, and the same architecture
trained without any bias, four test accuracies:

1. *train without bias*: argmax of the bias-free model's `f(x)` (for which `b^x = 0`);
2. *train with bias, test all*: argmax of the biased model's `f(x)`;
3. *test only wx*: argmax over the classes of `W^x x` alone;
4. *test only b*: argmax over the classes of `b^x` alone.

`W^x x` and `b^x` come from `Model.decompose` (two exact linear passes, every class at
once), batch by batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..model import load

#: The poster's table (accuracy in %): without bias, with bias (all), only wx, only b.
POSTER_TABLE: dict[str, tuple[float, float, float, float]] = {
    "CIFAR10": (87.0, 90.9, 71.5, 62.2),
    "CIFAR100": (62.8, 66.8, 40.3, 36.5),
    "FMNIST": (94.1, 94.7, 76.1, 24.6),
}
COLUMNS = ("Train Without Bias", "Train With Bias, Test All", "Test Only wx", "Test Only b")


@dataclass(frozen=True)
class BiasImportance:
    """Counts of correct test predictions out of ``n`` (``without_bias`` is None when no
    bias-free model was given); `accuracies` gives them as fractions."""

    n: int
    without_bias: int | None
    with_bias: int
    only_wx: int
    only_b: int

    def accuracies(self) -> tuple[float | None, float, float, float]:
        n = self.n
        return (None if self.without_bias is None else self.without_bias / n,
                self.with_bias / n, self.only_wx / n, self.only_b / n)


def bias_importance(biased: object, unbiased: object, X: object, y: object,
                    batch_size: int = 500) -> BiasImportance:
    """The four accuracies of Claim 1 (see the module) on data ``X`` with labels ``y``.

    ``biased``/``unbiased``: models (anything `bbp_ref.load` takes; ``unbiased`` may be
    None); ``X``: a batch shaped like the model input; ``y``: integer class labels, one per
    example; ``batch_size``: examples per engine pass (bounds the memory).
    """
    labels = np.asarray(y)
    data = np.asarray(X)
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype,
                                                                          np.integer):
        raise InputError(f"y must be {len(data)} integer labels, got shape "
                         f"{list(labels.shape)} and dtype {labels.dtype}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    model = load(biased)
    other = None if unbiased is None else load(unbiased)
    counts = np.zeros(4, dtype=np.int64)
    for start in range(0, len(data), batch_size):
        xb, yb = data[start:start + batch_size], labels[start:start + batch_size]
        wx, b = model.decompose(xb)
        full = model.forward(xb)
        predictions = [full, wx, b]
        if other is not None:
            predictions.insert(0, other.forward(xb))
        for k, scores in enumerate(predictions, start=4 - len(predictions)):
            counts[k] += int((_argmax(scores) == yb).sum())
    return BiasImportance(n=len(labels), without_bias=None if other is None else
                          int(counts[0]), with_bias=int(counts[1]), only_wx=int(counts[2]),
                          only_b=int(counts[3]))


def _argmax(scores: np.ndarray) -> np.ndarray:
    return scores.reshape(len(scores), -1).argmax(axis=1)


def format_table(results: Mapping[str, BiasImportance | tuple[float | None, ...]],
                 title: str = "Dataset") -> str:
    """A Markdown table, one row per entry: a `BiasImportance` (printed as accuracies in %
    with the counts) or a tuple of four accuracies already in % (e.g. `POSTER_TABLE`)."""
    rows = [f"| {title} | " + " | ".join(COLUMNS) + " |",
            "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for name, result in results.items():
        if isinstance(result, BiasImportance):
            counts = (result.without_bias, result.with_bias, result.only_wx, result.only_b)
            cells = ["—" if c is None else f"{100 * c / result.n:.1f} ({c}/{result.n})"
                     for c in counts]
        else:
            cells = ["—" if v is None else f"{v:.1f}" for v in result]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def print_table(results: Mapping[str, BiasImportance | tuple[float | None, ...]],
                with_poster: bool = True) -> None:
    """Print `format_table` of ``results``, after the poster's rows if ``with_poster``."""
    rows: dict[str, BiasImportance | tuple[float | None, ...]] = {}
    if with_poster:
        rows.update({f"{k} (poster)": v for k, v in POSTER_TABLE.items()})
    rows.update(results)
    print(format_table(rows))
