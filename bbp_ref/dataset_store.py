"""The Zarr store of `explain_dataset`: one array per field, chunked along the examples
one batch per chunk, written chunk by chunk; a chunk counts as done only after all of its
fields are written, so an interrupted run resumes at the first chunk not marked done.

Layout (docs/scaling.md): ``output``, ``target``, ``bias``, ``decomposition``,
``completeness`` [N]; ``gradient``, ``bias_attribution`` [N, *x]; ``layer_bias`` [N, L]
(the node names in the attribute ``layers``); ``passed``, ``failed`` [N] (bool); ``done``
[chunks] (bool). The group's attribute ``bbp_ref`` holds the run's settings, ``failures``
maps each failed example's index to its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .experiments.optional import require

SCALAR_FIELDS = ("output", "target", "bias", "decomposition", "completeness", "passed",
                 "failed")
EXAMPLE_FIELDS = ("gradient", "bias_attribution")
DTYPES = {"target": "int64", "passed": "bool", "failed": "bool"}


class DatasetStore:
    """A run's store at ``path``: created for ``settings`` or, if it exists, reopened
    when its settings are the same (anything else is refused, nothing is overwritten)."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any], examples: int,
                 example_shape: tuple[int, ...], batch_size: int,
                 layers: list[str]) -> None:
        zarr = require("zarr", "'bbp_ref[dataset]'")
        self.path = Path(path)
        self.batch_size = batch_size
        self.examples = examples
        self.chunks = -(-examples // batch_size)
        wanted = dict(settings, examples=examples, example_shape=list(example_shape),
                      batch_size=batch_size, layers=layers)
        if self.path.exists():
            try:
                self.root = zarr.open_group(str(self.path), mode="r+")
                found = dict(self.root.attrs.get("bbp_ref", {}))
            except Exception as exc:  # noqa: BLE001 - zarr raises several types here
                raise InputError(f"{self.path} exists and is not a bbp_ref store: {exc}") \
                    from exc
            if found != wanted:
                changed = sorted(k for k in set(found) | set(wanted)
                                 if found.get(k) != wanted.get(k))
                raise InputError(f"{self.path} holds a run with other settings ({changed}); "
                                 "choose another --out or remove it")
            return
        self.root = zarr.open_group(str(self.path), mode="w")
        b = batch_size
        for name in SCALAR_FIELDS:
            dtype = DTYPES.get(name, "float64")
            fill = False if dtype == "bool" else (-1 if dtype == "int64" else np.nan)
            self.root.create_array(name, shape=(examples,), chunks=(b,), dtype=dtype,
                                   fill_value=fill)
        for name in EXAMPLE_FIELDS:
            self.root.create_array(name, shape=(examples, *example_shape),
                                   chunks=(b, *example_shape), dtype="float64",
                                   fill_value=np.nan)
        self.root.create_array("layer_bias", shape=(examples, len(layers)),
                               chunks=(b, max(len(layers), 1)), dtype="float64",
                               fill_value=np.nan)
        self.root.create_array("done", shape=(self.chunks,), chunks=(min(self.chunks, 4096),),
                               dtype="bool", fill_value=False)
        self.root.attrs.update({"bbp_ref": wanted, "failures": {}})

    def missing(self) -> list[int]:
        """The chunks not yet marked done."""
        done = np.asarray(self.root["done"][:])
        return [int(i) for i in np.flatnonzero(~done)]

    def write(self, chunk: int, fields: Mapping[str, np.ndarray],
              failures: Mapping[int, str]) -> None:
        """Write one chunk's fields (arrays over its examples), then mark it done."""
        start = chunk * self.batch_size
        stop = min(start + self.batch_size, self.examples)
        for name, values in fields.items():
            self.root[name][start:stop] = values
        if failures:
            recorded = dict(self.root.attrs.get("failures", {}))
            recorded.update({str(start + i): reason for i, reason in failures.items()})
            self.root.attrs["failures"] = recorded
        self.root["done"][chunk] = True

    @property
    def failures(self) -> dict[int, str]:
        return {int(k): v for k, v in dict(self.root.attrs.get("failures", {})).items()}
