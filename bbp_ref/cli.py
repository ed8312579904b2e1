"""The ``bbp-ref`` command.

- ``bbp-ref explain [MODEL INPUT.npy] [--target K] [--rule R] [--layers ...] [--out F]``
  explains one output and prints a summary; with no MODEL it runs on the embedded default
  digits model and its sample input. ``--plot`` / ``--plot-layers`` draw the figures.
- ``bbp-ref nodes [MODEL]`` lists the canonical nodes.
- ``bbp-ref verify MODEL INPUT.npy CANDIDATE.npz`` compares another implementation's
  arrays (or a file of ``explain --out``, with the ``--wrt``/``--input`` binding it
  records) with bbp_ref's.
- ``bbp-ref golden OUT_DIR MODEL INPUT.npy [MODEL INPUT.npy ...]`` writes golden vectors.
- ``bbp-ref explain-dataset MODEL DATA [--out PATH] [--scheduler ADDRESS] [--workers N]``
  explains every example of a dataset into a Zarr store (docs/scaling.md; needs the
  'dataset' extra).
- ``bbp-ref reproduce`` and ``bbp-ref digit-flip``: the paper's claims on the digits models
  (docs/reproduction.md).

Exit codes (`EXIT_CODES`): 0 success, 1 a check failed, 2 bad input or usage (one line on
stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import __version__, oracle
from .attribution.rules import RULES
from .binding import tensor_types
from .defaults import default_input, default_model_path
from .errors import BBpError, InputError
from .experiments import digit_flip, reproduce
from .explain import Explanation, explain
from .files import archive_member, printable, read_npy, read_npz, write_atomically
from .model import Model, load

EXIT_CODES = ("exit codes: 0 success; 1 a check failed (explain: a residual above 1e-10 or "
              "onnxruntime disagrees; verify: a field outside the tolerance); 2 bad input or "
              "usage (one line on stderr)")
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
GRID_METHODS = ("bbp", "bbp-abs", "bbp-signed", "bbp-uniform", "gradient", "gradient-x-input",
                "ig", "ig-exact")
DEFAULT_GRID_METHODS = ("bbp", "gradient-x-input", "ig")


class _UsageError(Exception):
    """A command-line usage error, reported like every other error (one line, code 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, without the usage block
    (its subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _version() -> str:
    import onnx
    import onnxruntime

    return (f"bbp-ref {__version__} (onnx {onnx.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, numpy {np.__version__}, Python "
            f"{platform.python_version()})")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bbp-ref", description="Bias Backpropagation (BBp) for ONNX models: "
                     "the exact decomposition f_t(x) = W^x x + b^x and the bias attribution "
                     "B(x) (docs/math.md).", epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the versions of bbp-ref, onnx, onnxruntime and numpy")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="one of the commands below; 'bbp-ref COMMAND --help' "
                                     "lists its options")
    _add_explain(commands)
    nodes = commands.add_parser("nodes", help="list a model's canonical nodes",
                                epilog=EXIT_CODES)
    nodes.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    _add_verify(commands)
    rep = commands.add_parser("reproduce", help="the paper's table and figures on digits "
                              "(docs/reproduction.md; needs the 'experiments' extra)",
                              epilog=EXIT_CODES)
    reproduce.add_arguments(rep)
    flip = commands.add_parser("digit-flip", help="the paper's digit-flip test (Claim 3) on "
                               "digits (docs/reproduction.md; needs the 'experiments' extra)",
                               epilog=EXIT_CODES)
    digit_flip.add_arguments(flip)
    _add_explain_dataset(commands)
    gold = commands.add_parser("golden", help="write golden vectors for models and inputs",
                               epilog=EXIT_CODES)
    gold.add_argument("out", help="output folder")
    gold.add_argument("pairs", nargs="+", metavar="MODEL INPUT",
                      help="ONNX model and .npy input, repeated")
    return parser


def _add_explain(commands: argparse._SubParsersAction) -> None:
    ex = commands.add_parser("explain", help="explain one output of a model at an input",
                             epilog=EXIT_CODES)
    ex.add_argument("model", nargs="?", help="ONNX model (default: the embedded digits CNN)")
    ex.add_argument("input", nargs="?", help=".npy file: one example or a batch")
    ex.add_argument("--target", type=int, metavar="K",
                    help="index into the explained tensor, flattened (default: the argmax)")
    ex.add_argument("--rule", default="abs", choices=sorted(RULES),
                    help="how BBp splits a node's bias among its inputs (docs/math.md §4.1; "
                    "default abs)")
    ex.add_argument("--layers", nargs="+", metavar="NODE",
                    help="attribute only the biases of these nodes (see 'bbp-ref nodes')")
    ex.add_argument("--output", metavar="TENSOR",
                    help="the tensor to explain: a graph output or any float tensor inside "
                    "the graph, e.g. the logit before a Sigmoid (default: the first float "
                    "output)")
    ex.add_argument("--out", metavar="FILE",
                    help="save the arrays to exactly this file (.npz format), readable by "
                    "'bbp-ref verify' as a candidate; it records --wrt and the --input "
                    "values (with their files' names and SHA-256), so verify needs neither")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    ex.add_argument("--strict", action="store_true",
                    help="fail (exit 1) if onnxruntime cannot run the model for its check")
    ex.add_argument("--full-check", action="store_true",
                    help="also run the two linear passes of docs/math.md §3 (check='full')")
    ex.add_argument("--plot", metavar="OUT.png",
                    help="draw the attribution grid (needs matplotlib: the 'plot' extra)")
    ex.add_argument("--plot-layers", metavar="OUT.png",
                    help="draw each layer's bias attribution (needs matplotlib)")
    ex.add_argument("--methods", nargs="+", choices=GRID_METHODS, metavar="METHOD",
                    default=list(DEFAULT_GRID_METHODS),
                    help="the grid's columns: " + ", ".join(GRID_METHODS) + " (default: "
                    + " ".join(DEFAULT_GRID_METHODS) + "; bbp uses --rule, ig integrates by "
                    "Gauss-Legendre quadrature, ig-exact walks every kink of the path and can "
                    "take hours on a large model)")
    ex.add_argument("--ig-steps", type=int, default=32, metavar="N",
                    help="quadrature points of 'ig' (default 32)")
    ex.add_argument("--labels", type=int, nargs="+", metavar="K",
                    help="true classes of the examples, shown in the plots")
    ex.add_argument("--dpi", type=int, default=100, metavar="N",
                    help="resolution of PNG figures (default 100)")
    ex.add_argument("--quiet", action="store_true",
                    help="no progress bar (it is shown on stderr only when it is a terminal)")
    _add_binding_arguments(ex)


def _add_verify(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser("verify", help="check another implementation's arrays",
                                 epilog=EXIT_CODES)
    verify.add_argument("model", help="ONNX model")
    verify.add_argument("input", help=".npy file: one example or a batch")
    verify.add_argument("candidate", help=".npz file: field name -> array (see docs/oracle.md); "
                        "one of 'explain --out' brings its --wrt and --input values")
    verify.add_argument("--target", type=int, help="output index (default: the candidate's "
                        "'target' field, else the argmax)")
    verify.add_argument("--rtol", type=float, default=oracle.RTOL,
                        help=f"relative tolerance per element (default {oracle.RTOL:g})")
    verify.add_argument("--atol", type=float, default=oracle.ATOL,
                        help="absolute tolerance, times the field's largest magnitude "
                        f"(default {oracle.ATOL:g})")
    _add_binding_arguments(verify)


def _add_explain_dataset(commands: argparse._SubParsersAction) -> None:
    ds = commands.add_parser("explain-dataset", help="explain every example of a dataset into "
                             "a Zarr store (docs/scaling.md; needs the 'dataset' extra)",
                             epilog=EXIT_CODES)
    ds.add_argument("model", help="ONNX model")
    ds.add_argument("data", help=".npy file (a batch) or a folder of .npy files")
    ds.add_argument("--out", default="explanations.zarr",
                    help="Zarr store to write or resume [%(default)s]")
    ds.add_argument("--target", type=int, help="output index (default: each argmax)")
    ds.add_argument("--rule", default="abs", choices=sorted(RULES), help="BBp rule")
    ds.add_argument("--batch-size", type=int, help="examples per task and chunk [16]")
    ds.add_argument("--scheduler", metavar="ADDRESS",
                    help="a running Dask scheduler (default: a local cluster)")
    ds.add_argument("--workers", type=int,
                    help="local worker processes (default: the CPU count; 0: this process)")
    ds.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")


def _explain_dataset(args: argparse.Namespace) -> int:
    from .dataset import connect, explain_dataset

    client = None if args.scheduler is None else connect(args.scheduler)
    try:
        run = explain_dataset(args.model, args.data, target=args.target, rule=args.rule,
                              batch_size=args.batch_size, out=args.out, client=client,
                              workers=args.workers, check=not args.no_check)
    finally:
        if client is not None:
            client.close()
    print(f"wrote        {run.path} ({run.examples} examples, {len(run.computed)} of "
          f"{run.chunks} chunks computed now, {run.seconds:.1f} s)")
    for index, reason in sorted(run.failures.items()):
        print(f"failed       example {index}: {reason}")
    return 0


def _add_binding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wrt", metavar="NAME",
                        help="explain with respect to this tensor: a graph input or any "
                             "intermediate tensor ('bbp-ref nodes MODEL' lists them); INPUT "
                             "then holds the graph input's value")
    parser.add_argument("--input", dest="inputs", action="append", default=[],
                        metavar="NAME=FILE.npy",
                        help="the value of another graph input, a constant at the point "
                             "(repeat for each)")


def _input_files(args: argparse.Namespace) -> dict[str, str]:
    """Graph input name -> .npy file, from ``--input NAME=FILE.npy``."""
    files: dict[str, str] = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--input takes NAME=FILE.npy, got {item!r}")
        if name in files:
            raise InputError(f"--input gives {name!r} twice")
        files[name] = path
    return files


def _binding(args: argparse.Namespace) -> dict[str, object]:
    """``wrt=``/``inputs=`` keyword arguments from ``--wrt`` and ``--input``."""
    inputs = {name: _read_input(path) for name, path in _input_files(args).items()}
    bound: dict[str, object] = {}
    if args.wrt is not None:
        bound["wrt"] = args.wrt
    if inputs:
        bound["inputs"] = inputs
    return bound


def _binding_record(args: argparse.Namespace,
                    bound: dict[str, object]) -> dict[str, np.ndarray]:
    """What ``explain --out`` records of ``--wrt`` and ``--input`` (docs/math.md §9), so
    that ``verify`` re-checks the file without them: ``meta/wrt``, the given inputs'
    values (``meta/input/<k>``, in the order given) and ``meta/inputs``, a JSON list of
    ``{"name", "file", "sha256", "member"}`` (the file's name and SHA-256)."""
    record: dict[str, np.ndarray] = {}
    if args.wrt is not None:
        record["meta/wrt"] = np.array(args.wrt)
    values: dict = dict(bound.get("inputs", {}))  # type: ignore[call-overload]
    entries = []
    for k, (name, path) in enumerate(_input_files(args).items()):
        member = f"meta/input/{k}"
        record[member] = np.asarray(values[name])
        entries.append({"name": name, "file": Path(path).name, "sha256": _sha256(path),
                        "member": member})
    if entries:
        record["meta/inputs"] = np.array(json.dumps(entries))
    return record


def _recorded_binding(candidate: dict[str, np.ndarray],
                      given: dict[str, object]) -> dict[str, object]:
    """The binding ``verify`` uses: the one a file of ``explain --out`` records, with
    ``--wrt`` and each ``--input`` given on the command line taking the place of the
    recorded ones."""
    bound = dict(given)
    wrt = _text(candidate.get("meta/wrt"))
    if wrt is not None and "wrt" not in bound:
        bound["wrt"] = wrt
    inputs = {entry["name"]: _recorded_value(candidate, entry)
              for entry in _recorded_inputs(candidate)}
    inputs.update(given.get("inputs", {}))  # type: ignore[call-overload]
    if inputs:
        bound["inputs"] = inputs
    return bound


def _recorded_inputs(candidate: dict[str, np.ndarray]) -> list[dict[str, str]]:
    text = _text(candidate.get("meta/inputs"))
    if text is None:
        return []
    try:
        entries = json.loads(text)
        if not all(isinstance(e, dict) and {"name", "file", "sha256", "member"} <= set(e)
                   and all(isinstance(v, str) for v in e.values()) for e in entries):
            raise ValueError("entries need the string fields name, file, sha256, member")
    except (ValueError, TypeError) as exc:
        raise InputError(f"the candidate's 'meta/inputs' field is not the list "
                         f"'explain --out' writes: {exc}") from exc
    return entries  # type: ignore[no-any-return]


def _recorded_value(candidate: dict[str, np.ndarray], entry: dict[str, str]) -> np.ndarray:
    if entry["member"] not in candidate:
        raise InputError(f"the candidate records input {entry['name']!r} in field "
                         f"{entry['member']!r}, which it does not hold")
    return candidate[entry["member"]]


def _input_mismatches(args: argparse.Namespace, candidate: dict[str, np.ndarray]) -> list[str]:
    """The ``--input`` files given to ``verify`` whose SHA-256 differs from the one the
    candidate records for that input."""
    recorded = {e["name"]: e for e in _recorded_inputs(candidate)}
    lines = []
    for name, path in _input_files(args).items():
        entry = recorded.get(name)
        if entry is not None and entry["sha256"] != _sha256(path):
            lines.append(f"INPUT MISMATCH: the candidate was computed with input {name!r} "
                         f"from {entry['file']} (SHA-256 {entry['sha256']}), not {path}")
    return lines


# -- files -----------------------------------------------------------------------------


def _read_input(path: str) -> np.ndarray:
    """The array of an .npy file, or an `InputError` that names what the file really is."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"input {path} is a directory, not an .npy file")
    if not file.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        with open(file, "rb") as stream:
            head = stream.read(len(NPY_MAGIC))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if head.startswith(ZIP_MAGIC):
        raise InputError(f"input {path} is an .npz archive of several arrays; give one array "
                         "as an .npy file (numpy.save('x.npy', archive['name']))")
    if not head.startswith(NPY_MAGIC):
        raise InputError(f"input {path} {_not_npy(file)}")
    return read_npy(path)  # budgeted, pickles refused


def _not_npy(file: Path) -> str:
    """What a file that is not an .npy array looks like, for the error message."""
    data = file.read_bytes()[:4096]
    if file.suffix.lower() == ".onnx" or _parses_as_onnx(file):
        return ("is an ONNX model, not an .npy array: were MODEL and INPUT swapped? "
                "(bbp-ref explain MODEL.onnx INPUT.npy)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "is not an .npy array (it lacks the .npy header); save it with numpy.save"
    return ("is a text file, not an .npy array; load it (e.g. numpy.loadtxt) and save it "
            "with numpy.save")


def _parses_as_onnx(file: Path) -> bool:
    try:
        load(str(file))
    except BBpError:
        return False
    return True


def _load_model(path: str | None, output: str | None = None) -> tuple[Model, str]:
    """The model of the MODEL argument (default: the embedded one) and its path."""
    source = path or str(default_model_path())
    file = Path(source)
    if file.is_file():
        with open(file, "rb") as stream:
            head = stream.read(len(NPY_MAGIC))
        if head.startswith(NPY_MAGIC):
            raise InputError(f"model {source} is a NumPy .npy array, not an ONNX model: were "
                             "MODEL and INPUT swapped? (bbp-ref explain MODEL.onnx INPUT.npy)")
    return load(source, output=output), source


def _write_exactly(path: str, arrays: dict[str, np.ndarray]) -> None:
    """An .npz archive written to exactly ``path`` (numpy.savez alone would append
    ``.npz``), atomically; node names become safe archive member names
    (`files.archive_member`, which `oracle.compare` decodes)."""
    safe = {_member(name): value for name, value in arrays.items()}
    write_atomically(path, lambda stream: np.savez(stream, **safe))  # type: ignore[arg-type]


def _member(field: str) -> str:
    family, sep, node = field.partition("/")
    return f"{family}/{archive_member(node)}" if family == "layer_bias" and sep else field


def _metadata(e: Explanation, model: Model, source: str) -> dict[str, np.ndarray]:
    """What ``explain --out`` records besides the arrays (``meta/`` fields, which
    ``verify`` does not compare): the rule, the explained tensor, the model's file and
    SHA-256, and the versions that computed it."""
    import onnx
    import onnxruntime

    versions = {"bbp_ref": __version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    output = {"meta/output": np.array(_explained_output(model))} if _explained_output(
        model) else {}
    return {"meta/rule": np.array(e.rule), **output, "meta/model": np.array(Path(source).name),
            "meta/model_sha256": np.array(_sha256(source)),
            "meta/versions": np.array(json.dumps(versions, sort_keys=True))}


def _explained_output(model: Model) -> str:
    return (model.output_name or "") if model.needs_binding else model.signature.output


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_candidate(path: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if file.is_dir():
        raise InputError(f"candidate {path} is a directory, not an .npz file")
    return read_npz(path)  # budgeted, pickles refused


# -- the summary -----------------------------------------------------------------------


def _summary(e: Explanation, model: Model, source: str, x: np.ndarray,
             target_given: bool) -> str:
    """The explanation in words, for a reader who has not read the paper."""
    rows = [f"model        {source}", _explained_line(e, model, target_given)]
    if e.stripped:
        rows.append(f"stripped     {printable(', '.join(e.stripped))}: its input is explained")
    rows += _value_lines(e, x)
    rows.append(f"rule         {e.rule}: how each node's bias is split among its inputs "
                "(docs/math.md §4.1)")
    if set(e.layers) != set(e.layer_bias):
        rows += _partial_lines(e)
    rows.append(f"model kind   {_model_kind(e)}")
    rows.append(e.checks.summary())
    return "\n".join(rows)


def _model_kind(e: Explanation) -> str:
    """Which of the two local models was explained (docs/math.md §1 and §7)."""
    if e.piecewise_linear:
        return "piecewise linear: W^x and b^x hold on the whole linear region around x"
    names = e.tangent_nodes
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"tangent model at x only: {len(names)} node(s) are not piecewise linear "
            f"({shown})")


def _explained_line(e: Explanation, model: Model, target_given: bool) -> str:
    size = int(np.prod(np.shape(e.logits)[np.ndim(e.output):]))
    why = "chosen with --target" if target_given else "the largest, e.g. the predicted class"
    tensor = printable(repr(_explained_tensor(model)))
    return f"explained    element t of tensor {tensor} (of {size}; {why})"


def _explained_tensor(model: Model) -> str:
    if model.needs_binding:  # several graph inputs: the signature depends on the binding
        return model.output_name or "the first float output"
    return model.signature.explained


def _value_lines(e: Explanation, x: np.ndarray) -> list[str]:
    outputs = np.atleast_1d(e.output)
    n = len(outputs)
    weights_times_x = np.reshape(e.gradient * x, (n, -1)).sum(axis=1)
    attributed = np.reshape(e.bias_attribution, (n, -1)).sum(axis=1)
    legend = ["f_t(x)       the explained output at the input x",
              "W^x x        gradient × input: the part of f_t(x) that is linear in x",
              "b^x          the bias term of the local linear model f(x) = W^x x + b^x",
              "sum B(x)     the bias attribution B(x) (b^x spread over the input "
              "features), summed"]
    rows = []
    for i, (t, out, b) in enumerate(zip(np.atleast_1d(e.target), outputs,
                                        np.atleast_1d(e.bias))):
        label = f"example {i}: " if np.ndim(e.output) > 0 else ""
        rows.append(f"{label}target {t}   f_t(x) = {out:.6g}   W^x x = "
                    f"{weights_times_x[i]:.6g}   b^x = {b:.6g}   sum B(x) = "
                    f"{attributed[i]:.6g}")
    return legend + rows


def _partial_lines(e: Explanation) -> list[str]:
    injected = np.sum([np.asarray(e.layer_bias[name]) for name in e.layers], axis=0)
    share = ", ".join(f"{v:.6g}" for v in np.atleast_1d(injected))
    return [f"layers       only {printable(', '.join(e.layers))}: B(x) spreads these nodes' "
            "biases only, "
            f"so sum B(x) is their share of b^x ({share}), not b^x"]


# -- the commands ----------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    commands = {"explain": _explain, "nodes": _nodes, "verify": _verify, "golden": _golden,
                "reproduce": reproduce.run, "digit-flip": _digit_flip,
                "explain-dataset": _explain_dataset}
    return commands[args.command](args)


def _nodes(args: argparse.Namespace) -> int:
    model, _ = _load_model(args.model)
    print("graph inputs:")
    for info in model.graph_inputs:
        print(f"  {printable(info.describe())}")
    if not model.needs_binding:
        print("canonical nodes (name, kind, op, per-example shape):")
        for node in model.nodes:
            print(f"  {printable(node.name):40s} {node.kind:7s} {printable(node.op):30s} "
                  f"{list(node.shape)}")
    print("tensors --wrt can name (type, shape):")
    for name, text in tensor_types(model.proto).items():
        print(f"  {printable(name):40s} {printable(text)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    candidate = _read_candidate(args.candidate)
    x = _read_input(args.input)
    model, source = _load_model(args.model, output=_text(candidate.get("meta/output")))
    bound = _recorded_binding(candidate, _binding(args))
    report = oracle.compare(model, x, candidate, target=args.target, rtol=args.rtol,
                            atol=args.atol, **bound)  # type: ignore[arg-type]
    print("\n".join(printable(line) for line in str(report).splitlines()))
    mismatches = [printable(line) for line in _input_mismatches(args, candidate)]
    recorded = _text(candidate.get("meta/model_sha256"))
    if recorded is not None and recorded != _sha256(source):
        mismatches.append(f"MODEL MISMATCH: the candidate was computed for a model with "
                          f"SHA-256 {recorded}, not {printable(source)}")
    if mismatches:
        print("\n".join(mismatches))
        return 1
    return 0 if report.passed else 1


def _text(value: np.ndarray | None) -> str | None:
    return None if value is None else str(np.asarray(value).item())


def _golden(args: argparse.Namespace) -> int:
    if len(args.pairs) % 2:
        raise InputError("golden takes MODEL INPUT pairs")
    cases = []
    for model, data in zip(args.pairs[::2], args.pairs[1::2]):
        if not Path(model).is_file():
            raise InputError(f"model file not found: {model}")
        cases.append(oracle.GoldenCase(Path(model).stem, Path(model), _read_input(data)))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise InputError(f"model names must differ: {names}")
    manifest = oracle.golden(cases, args.out)
    print(f"wrote {len(cases)} golden case(s) and {manifest}")
    return 0


def _digit_flip(args: argparse.Namespace) -> int:
    digit_flip.run(args)
    return 0


def _explain(args: argparse.Namespace) -> int:
    if args.model is not None and args.input is None:
        raise InputError("give an INPUT.npy file after the model")
    x = default_input() if args.model is None else _read_input(args.input)
    if sum((args.strict, args.no_check, args.full_check)) > 1:
        raise _UsageError("--strict, --no-check and --full-check exclude each other")
    model, source = _load_model(args.model, output=args.output)  # once, for all below
    bound = _binding(args)
    if bound and (args.plot or args.plot_layers):
        raise InputError("--plot and --plot-layers do not support --wrt/--input yet")
    e = explain(model, x, target=args.target, rule=args.rule, layers=args.layers,
                check="full" if args.full_check else "strict" if args.strict
                else not args.no_check, **bound)  # type: ignore[call-overload]
    explained = np.asarray(x if e.wrt_value is None else e.wrt_value)
    print(_summary(e, model, source, explained.astype(np.float64), args.target is not None))
    if args.out:
        _write_exactly(args.out, {**oracle.explanation_fields(e, explained),
                                  **_metadata(e, model, source),
                                  **_binding_record(args, bound)})
        print(f"saved        {printable(args.out)} (bbp-ref verify MODEL INPUT "
              f"{printable(args.out)} checks it)")
    if args.plot or args.plot_layers:
        _plot(args, model, x, e if args.layers is None else None)
    return 0 if e.checks.passed else 1


def _plot(args: argparse.Namespace, model: Model, x: np.ndarray,
          explained: Explanation | None) -> None:
    from . import plot
    from .progress import Progress

    progress = Progress("figures", enabled=False if args.quiet else None)
    try:
        written = plot.explain_plot(
            model, x, args.plot, labels=args.labels, target=args.target, rule=args.rule,
            layers=args.layers, layers_out_path=args.plot_layers, dpi=args.dpi,
            methods=plot.grid_methods(args.methods, args.rule), ig_steps=args.ig_steps,
            progress=progress, explained=explained)
    finally:
        progress.close()
    print(f"plotted      {', '.join(str(p) for p in written)}")


def _fail(message: str) -> int:
    print(f"bbp-ref: error: {printable(' '.join(message.split()))}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(_parser().parse_args(argv))
    except (BBpError, _UsageError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("bbp-ref: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, but the CLI never shows a traceback
        return _fail(f"internal error ({type(exc).__name__}: {exc}); please report it")


if __name__ == "__main__":
    sys.exit(main())
