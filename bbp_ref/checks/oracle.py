"""bbp_ref as a correctness oracle: compare another implementation's arrays with the
exact float64 ones (`compare`), and write golden vectors that an implementation in any
language can test itself against without bbp_ref installed (`golden`).

Field names: ``input`` (checked against the given input), ``output``, ``logits``,
``target``, ``gradient``, ``gradient_x_input``, ``jacobian``, ``bias``,
``bias_attribution/<rule>`` (``abs``, ``signed``, ``uniform``),
``layer_bias/<node>``, ``integrated_gradients`` (exact, zero baseline) and ``deeplift``
(zero baseline). Arrays follow `explain`'s conventions: one example in, no batch axis;
a batch in, a leading batch axis. Fields under ``meta/`` describe the candidate and are
not compared: ``meta/layers`` (the nodes whose biases ``bias_attribution/<rule>``
attributes; default all) and ``meta/output`` (the explained tensor) set how the reference
is computed; the others (``meta/rule``, ``meta/model_sha256``, ``meta/versions``, ...) are
records. `explanation_fields` writes an explanation with these names (``bbp-ref explain
--out``).

Default tolerances suit a float32 candidate. An element passes when
``|candidate - reference| <= rtol * |reference| + atol * max|reference|``: float32 has a
relative rounding error of 6e-8 per operation, and a gradient or attribution sums
thousands of products through a dozen layers, so relative errors of 1e-6 to 1e-5 are
normal; ``rtol = 1e-4`` leaves a margin of ten. Elements much smaller than the field's
largest (sums that nearly cancel) carry the absolute error of the large terms they
were summed from, hence the absolute part scaled by the field's magnitude,
``atol = 1e-5``. A float64 candidate should pass with both a million times smaller.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO
from urllib.parse import unquote

import numpy as np

from ..attribution.baselines import deeplift
from ..attribution.integrated_gradients import integrated_gradients
from ..attribution.rules import RULES
from ..errors import InputError
from ..explain import Explanation, explain
from ..files import write_atomically
from ..importer.torch_export import as_numpy
from ..model import Model, load

RTOL = 1e-4
ATOL = 1e-5
STANDARD_FIELDS = ("output", "logits", "target", "gradient", "gradient_x_input", "bias",
                   *(f"bias_attribution/{rule}" for rule in RULES))
META = "meta/"


@dataclass(frozen=True)
class FieldResult:
    """One field's comparison: largest absolute and relative error, the index of the
    worst element (the one furthest beyond its tolerance), and the verdict."""

    field: str
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...] | None
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Report:
    """The comparison of every candidate field with bbp_ref's reference."""

    results: tuple[FieldResult, ...]
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __getitem__(self, field: str) -> FieldResult:
        for result in self.results:
            if result.field == field:
                return result
        raise KeyError(field)

    def __str__(self) -> str:
        header = ("field", "max abs err", "max rel err", "worst index", "result")
        rows = [header] + [
            (r.field, f"{r.max_abs_error:.3g}", f"{r.max_rel_error:.3g}",
             "-" if r.worst_index is None else str(list(r.worst_index)),
             ("pass" if r.passed else "FAIL") + (f" ({r.note})" if r.note else ""))
            for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"{verdict}: {sum(r.passed for r in self.results)} of "
                     f"{len(self.results)} fields within rtol={self.rtol:g}, "
                     f"atol={self.atol:g} (x the field's largest magnitude)")
        return "\n".join(lines)


def compare_arrays(field: str, candidate: object, reference: np.ndarray,
                   rtol: float = RTOL, atol: float = ATOL) -> FieldResult:
    """Compare one candidate array with the reference (see the module docstring)."""
    try:
        values = np.asarray(candidate, dtype=np.float64)
    except (TypeError, ValueError):
        return FieldResult(field, np.inf, np.inf, None, False, "not a numeric array")
    reference = np.asarray(reference, dtype=np.float64)
    if values.shape != reference.shape:
        return FieldResult(field, np.inf, np.inf, None, False,
                           f"shape {list(values.shape)} != {list(reference.shape)}")
    if values.size == 0:
        return FieldResult(field, 0.0, 0.0, None, True)
    error = np.abs(values - reference)
    error = np.where(np.isnan(values), np.inf, error)
    magnitude = np.abs(reference)
    allowed = rtol * magnitude + atol * float(magnitude.max())
    relative = error / np.where(magnitude > 0, magnitude, 1.0)
    excess = np.where(allowed > 0, error / np.where(allowed > 0, allowed, 1.0),
                      np.where(error > 0, np.inf, 0.0))
    worst = None if not error.any() else tuple(
        int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    return FieldResult(field, float(error.max()), float(relative.max()), worst,
                       bool((error <= allowed).all()))


class _Reference:
    """Computes reference fields lazily, one `explain` per rule."""

    def __init__(self, model: Model, x: np.ndarray, target: object,
                 bind: Mapping[str, object] | None = None,
                 layers: Sequence[str] | None = None) -> None:
        self.model, self.x, self.target, self.layers = model, x, target, layers
        self.bind = dict(bind or {})  # wrt= and inputs=, passed on to every computation
        self._explained: dict[str, Explanation] = {}

    @property
    def bound(self) -> bool:
        return bool(self.bind) or self.model.needs_binding

    def explanation(self, rule: str = "abs") -> Explanation:
        if rule not in self._explained:
            self._explained[rule] = explain(self.model, self.x, target=self.target, rule=rule,
                                            layers=self.layers, check=False,
                                            **self.bind)  # type: ignore[call-overload]
        return self._explained[rule]

    def explained_input(self) -> np.ndarray:
        """The value of the explained tensor (``x``, or ``wrt``'s value)."""
        value = self.explanation().wrt_value
        return self.x if value is None else value

    def field(self, name: str) -> np.ndarray:
        simple: dict[str, Callable[[], np.ndarray]] = {
            "input": self.explained_input,  # as `explanation_fields` writes it
            "output": lambda: self.explanation().output,
            "logits": lambda: self.explanation().logits,
            "target": lambda: self.explanation().target,
            "gradient": lambda: self.explanation().gradient,
            "gradient_x_input": lambda: self.explanation().gradient * self.explained_input(),
            "bias": lambda: self.explanation().bias,
            "jacobian": lambda: self.model.jacobian(self.x, **self.bind),  # type: ignore
            "integrated_gradients": self._integrated_gradients,
            "deeplift": self._deeplift,
        }
        if name in simple:
            return np.asarray(simple[name]())
        family, _, member = name.partition("/")
        if family == "bias_attribution" and member in RULES:
            return self.explanation(member).bias_attribution
        if family == "layer_bias" and member:
            member = unquote(member)  # explain --out writes names as archive members
            layer_bias = self.explanation().layer_bias
            if self.bound:
                resolved: str | None = member if member in layer_bias else unquote(member)
            else:
                graph = self.model.graph_for(self._example_shape())
                # a node name as written by `files.archive_member` (percent-encoded)
                resolved = graph.resolve(member) or graph.resolve(unquote(member))
            if resolved is not None and resolved in layer_bias:
                return np.asarray(layer_bias[resolved])
            raise InputError(f"field {name!r}: no node {member!r} with a bias; choose from "
                             f"{sorted(layer_bias)}")
        raise InputError(f"unknown field {name!r}; known fields: {', '.join(known_fields())}")

    def _example_shape(self) -> tuple[int, ...]:
        batch, _ = self.model.prepare(self.x)
        return tuple(batch.shape[1:])

    def _integrated_gradients(self) -> np.ndarray:
        return np.asarray(integrated_gradients(self.model, self.x, target=self.target,
                                               method="exact",
                                               **self.bind).attribution)  # type: ignore

    def _deeplift(self) -> np.ndarray:
        return np.asarray(deeplift(self.model, self.x, target=self.target,
                                   **self.bind).attribution)  # type: ignore


def known_fields() -> list[str]:
    return ["input", *STANDARD_FIELDS, "jacobian", "layer_bias/<node>", "integrated_gradients",
            "deeplift"]


def compare(model: object, x: object, candidate: Mapping[str, object], target: object = None,
            rtol: float = RTOL, atol: float = ATOL, *, wrt: str | None = None,
            inputs: Mapping[str, object] | None = None) -> Report:
    """Compare ``candidate`` (field name -> array from another implementation) with
    bbp_ref's exact values for ``model`` at ``x``. The target is ``target``, else the
    candidate's own ``target`` field, else the argmax of each example's output; the
    ``meta/`` fields are not compared (see the module docstring). ``wrt``/``inputs`` as in
    `bbp_ref.explain` (the fields are then shaped like ``wrt``)."""
    output = _meta_text(candidate, "output")
    loaded = load(model, output=output, example=x)
    x_array = np.asarray(as_numpy(x))
    if target is None and "target" in candidate:
        target = _candidate_target(candidate["target"])
    bind = {k: v for k, v in (("wrt", wrt), ("inputs", inputs)) if v is not None}
    layers = candidate.get(META + "layers")
    names = None if layers is None else [str(n) for n in np.asarray(layers).reshape(-1)]
    reference = _Reference(loaded, x_array, target, bind, names)
    results = [compare_arrays(name, value, reference.field(name), rtol, atol)
               for name, value in candidate.items() if not name.startswith(META)]
    if not results:
        raise InputError("the candidate has no fields to compare")
    return Report(tuple(results), rtol, atol)


def _candidate_target(value: object) -> np.ndarray:
    """The candidate's ``target`` field as integer indices, or an `InputError`."""
    target = np.asarray(value)
    if target.dtype.kind not in "iub" and not (
            target.dtype.kind == "f" and np.isfinite(target).all()
            and (target == np.round(target)).all()):
        raise InputError(f"the candidate's 'target' field must hold integer output indices, "
                         f"got an array of dtype {target.dtype}")
    return target.astype(np.int64)


def _meta_text(candidate: Mapping[str, object], name: str) -> str | None:
    value = candidate.get(META + name)
    return None if value is None else str(np.asarray(value).item())


def explanation_fields(e: Explanation, x: np.ndarray) -> dict[str, np.ndarray]:
    """An explanation's arrays under the field names `compare` knows, so that a saved
    explanation is a candidate `compare` (``bbp-ref verify``) accepts: ``input``,
    ``output``, ``logits``, ``target``, ``gradient``, ``gradient_x_input``, ``bias``,
    ``bias_attribution/<rule>``, ``layer_bias/<node>``, and ``meta/layers`` when only
    some nodes' biases were attributed."""
    fields = {"input": np.asarray(x), "output": e.output, "logits": e.logits,
              "target": e.target, "gradient": e.gradient, "gradient_x_input": e.gradient * x,
              "bias": e.bias, f"bias_attribution/{e.rule}": e.bias_attribution}
    fields.update({f"layer_bias/{name}": value for name, value in e.layer_bias.items()})
    if set(e.layers) != set(e.layer_bias):
        fields[META + "layers"] = np.array(e.layers, dtype=str)
    return {name: np.asarray(value) for name, value in fields.items()}


# -- golden vectors ----------------------------------------------------------------

@dataclass(frozen=True)
class GoldenCase:
    """One model and input of a golden set; ``model`` is a path."""

    name: str
    model: Path
    x: np.ndarray


def golden_fields(model: object, x: np.ndarray, fields: Sequence[str] = STANDARD_FIELDS,
                  target: object = None) -> dict[str, np.ndarray]:
    reference = _Reference(load(model, example=x), x, target)
    return {name: reference.field(name) for name in fields}


def golden(cases: Sequence[GoldenCase], out_dir: str | Path,
           fields: Sequence[str] = STANDARD_FIELDS) -> Path:
    """Write golden vectors: ``<name>.npz`` per case (``input`` and every field) and
    ``manifest.json`` (versions, fields, tolerances, model checksums). The files are
    byte-for-byte reproducible on one machine. Returns the manifest's path."""
    import onnx

    from .. import __version__

    out = Path(out_dir)
    computed = []
    for case in cases:
        arrays = {"input": np.asarray(case.x), **golden_fields(case.model, case.x, fields)}
        for name, array in arrays.items():
            if np.asarray(array).dtype.kind == "f" and not np.isfinite(array).all():
                raise InputError(f"golden case {case.name!r}: field {name!r} is not finite; "
                                 "refusing to write it as a reference")
        computed.append((case, arrays))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the golden folder {out}: {exc.strerror}") from exc
    entries = []
    for case, arrays in computed:
        write_atomically(out / f"{case.name}.npz", partial(_write_npz, arrays=arrays))
        entries.append({
            "name": case.name,
            "model": case.model.name,
            "model_sha256": hashlib.sha256(case.model.read_bytes()).hexdigest(),
            "file": f"{case.name}.npz",
            "input_shape": list(np.shape(case.x)),
            "targets": np.atleast_1d(arrays["target"]).tolist(),
        })
    manifest = {
        "bbp_ref": __version__, "onnx": onnx.__version__, "numpy": np.__version__,
        "fields": list(fields), "rules": list(RULES),
        "tolerances": {"rtol": RTOL, "atol": ATOL,
                       "meaning": "|candidate - reference| <= rtol * |reference| + "
                                  "atol * max|reference| (per field), for float32 candidates"},
        "conventions": "arrays of a batch input have a leading batch axis; targets index "
                       "each example's flattened output; the explained output is the logits "
                       "(a final Softmax/LogSoftmax is stripped)",
        "cases": entries,
    }
    text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return write_atomically(out / "manifest.json", lambda stream: stream.write(text))


def _write_npz(stream: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz (readable by numpy.load) with fixed timestamps, so the bytes depend
    on the arrays only."""
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
