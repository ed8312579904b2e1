"""The ``bbp-ref`` command.

- ``bbp-ref explain [MODEL INPUT.npy] [--target K] [--rule R] [--layers ...] [--out F]``
  explains one output and prints a summary; with no MODEL it runs on the embedded default
  digits model and its sample input. Exit code 1 if a check fails.
- ``bbp-ref nodes [MODEL]`` lists the canonical nodes.
- ``bbp-ref verify MODEL INPUT.npy CANDIDATE.npz`` compares another implementation's
  arrays with bbp_ref's (exit code 1 on a mismatch).
- ``bbp-ref golden OUT_DIR MODEL INPUT.npy [MODEL INPUT.npy ...]`` writes golden vectors.
- ``bbp-ref reproduce`` and ``bbp-ref digit-flip``: the paper's claims on the digits models
  (docs/reproduction.md).

Errors exit with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import oracle
from .attribution.rules import RULES
from .binding import tensor_types
from .defaults import default_input, default_model_path
from .errors import BBpError, InputError
from .experiments import digit_flip
from .explain import Explanation, explain
from .files import archive_member, printable, read_npy, read_npz, write_atomically
from .model import load


class _UsageError(Exception):
    """A command-line usage error, reported like every other error (one line, code 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, without the usage block
    (its subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bbp-ref", description="Bias Backpropagation (BBp) for ONNX models.")
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("explain", help="explain one output of a model at an input")
    ex.add_argument("model", nargs="?", help="ONNX model (default: the embedded digits CNN)")
    ex.add_argument("input", nargs="?", help=".npy file: one example or a batch")
    ex.add_argument("--target", type=int, help="output index (default: the argmax)")
    ex.add_argument("--rule", default="abs", choices=sorted(RULES), help="BBp rule")
    ex.add_argument("--layers", nargs="+", metavar="NODE",
                    help="attribute only the biases of these nodes")
    ex.add_argument("--out", help="save the arrays to this .npz file")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    ex.add_argument("--strict", action="store_true",
                    help="fail (exit 1) if onnxruntime cannot run the model for its check")
    ex.add_argument("--plot", metavar="OUT.png",
                    help="draw the attribution grid (needs matplotlib: the 'plot' extra)")
    ex.add_argument("--plot-layers", metavar="OUT.png",
                    help="draw the per-layer bias attribution (needs matplotlib)")
    ex.add_argument("--labels", type=int, nargs="+", metavar="K",
                    help="true classes of the examples, shown in the plots")
    _add_binding_arguments(ex)
    nodes = commands.add_parser("nodes", help="list a model's canonical nodes")
    nodes.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    verify = commands.add_parser("verify", help="check another implementation's arrays")
    verify.add_argument("model", help="ONNX model")
    verify.add_argument("input", help=".npy file: one example or a batch")
    verify.add_argument("candidate", help=".npz file: field name -> array (see docs/oracle.md)")
    verify.add_argument("--target", type=int, help="output index (default: the candidate's "
                        "'target' field, else the argmax)")
    verify.add_argument("--rtol", type=float, default=oracle.RTOL)
    verify.add_argument("--atol", type=float, default=oracle.ATOL)
    _add_binding_arguments(verify)
    rep = commands.add_parser("reproduce", help="the paper's table and figures on digits "
                              "(docs/reproduction.md; needs the 'experiments' extra)")
    rep.add_argument("--models", default="models/digits", help="folder of the digits models")
    rep.add_argument("--images", default="docs/images", help="folder for the figures")
    rep.add_argument("--no-figures", action="store_true", help="only the table")
    flip = commands.add_parser("digit-flip", help="the paper's digit-flip test (Claim 3) on "
                               "digits (docs/reproduction.md; needs the 'experiments' extra)")
    digit_flip.add_arguments(flip)
    gold = commands.add_parser("golden", help="write golden vectors for models and inputs")
    gold.add_argument("out", help="output folder")
    gold.add_argument("pairs", nargs="+", metavar="MODEL INPUT",
                      help="ONNX model and .npy input, repeated")
    return parser


def _add_binding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wrt", metavar="NAME",
                        help="explain with respect to this tensor: a graph input or any "
                             "intermediate tensor ('bbp-ref nodes MODEL' lists them); INPUT "
                             "then holds the graph input's value")
    parser.add_argument("--input", dest="inputs", action="append", default=[],
                        metavar="NAME=FILE.npy",
                        help="the value of another graph input, a constant at the point "
                             "(repeat for each)")


def _binding(args: argparse.Namespace) -> dict[str, object]:
    """``wrt=``/``inputs=`` keyword arguments from ``--wrt`` and ``--input``."""
    inputs: dict[str, np.ndarray] = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--input takes NAME=FILE.npy, got {item!r}")
        if name in inputs:
            raise InputError(f"--input gives {name!r} twice")
        inputs[name] = _read_input(path)
    bound: dict[str, object] = {}
    if args.wrt is not None:
        bound["wrt"] = args.wrt
    if inputs:
        bound["inputs"] = inputs
    return bound


def _read_input(path: str) -> np.ndarray:
    return read_npy(path)


def _summary(e: Explanation, source: str, x: np.ndarray) -> str:
    batch = np.ndim(e.output) > 0
    rows = [f"model        {source}"]
    if e.stripped:
        rows.append(f"stripped     {printable(', '.join(e.stripped))} (the logits are "
                    "explained)")
    outputs = np.atleast_1d(e.output)
    targets = np.atleast_1d(e.target)
    biases = np.atleast_1d(e.bias)
    attributions = np.atleast_2d(np.reshape(e.bias_attribution, (len(outputs), -1)))
    weights_times_x = np.reshape(e.gradient * x, (len(outputs), -1)).sum(axis=1)
    for i, (t, out, b) in enumerate(zip(targets, outputs, biases)):
        label = f"example {i}: " if batch else ""
        rows.append(f"{label}target {t}   f_t(x) = {out:.6g}   W^x x = {weights_times_x[i]:.6g}   "
                    f"b^x = {b:.6g}   sum B(x) = {attributions[i].sum():.6g}")
    rows.append(f"rule         {e.rule}")
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


def _save(path: str, e: Explanation) -> None:
    """The arrays to exactly ``path`` (no ``.npz`` added), written atomically; node
    names are made safe archive member names (`files.archive_member`)."""
    arrays = {"output": e.output, "target": e.target, "gradient": e.gradient, "bias": e.bias,
              "bias_attribution": e.bias_attribution, "logits": e.logits}
    arrays.update({f"layer_bias/{archive_member(name)}": v for name, v in e.layer_bias.items()})
    write_atomically(path, lambda stream: np.savez(stream, **arrays))  # type: ignore[arg-type]


def _read_candidate(path: str) -> dict[str, np.ndarray]:
    return read_npz(path)


def _run(args: argparse.Namespace) -> int:
    commands = {"explain": _explain, "nodes": _nodes, "verify": _verify, "golden": _golden,
                "reproduce": _reproduce, "digit-flip": _digit_flip}
    return commands[args.command](args)


def _nodes(args: argparse.Namespace) -> int:
    model = load(args.model or str(default_model_path()))
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
    report = oracle.compare(args.model, _read_input(args.input), _read_candidate(args.candidate),
                            target=args.target, rtol=args.rtol, atol=args.atol,
                            **_binding(args))  # type: ignore[arg-type]
    print("\n".join(printable(line) for line in str(report).splitlines()))
    return 0 if report.passed else 1


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


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments import reproduce

    argv = ["--models", args.models, "--images", args.images]
    return reproduce.main(argv + (["--no-figures"] if args.no_figures else []))


def _digit_flip(args: argparse.Namespace) -> int:
    digit_flip.run(args)
    return 0


def _explain(args: argparse.Namespace) -> int:
    source = args.model or str(default_model_path())
    if args.model is not None and args.input is None:
        raise InputError("give an INPUT.npy file after the model")
    x = default_input() if args.model is None else _read_input(args.input)
    if args.strict and args.no_check:
        raise _UsageError("--strict and --no-check exclude each other")
    model = load(source)  # once, for the explanation and the figures
    bound = _binding(args)
    if bound and (args.plot or args.plot_layers):
        raise InputError("--plot and --plot-layers do not support --wrt/--input yet")
    e = explain(model, x, target=args.target, rule=args.rule, layers=args.layers,
                check="strict" if args.strict else not args.no_check,
                **bound)  # type: ignore[arg-type]
    explained = x if e.wrt_value is None else e.wrt_value
    print(_summary(e, source, np.asarray(explained, dtype=np.float64)))
    if args.out:
        _save(args.out, e)
        print(f"saved        {printable(args.out)}")
    if args.plot or args.plot_layers:
        from . import plot

        if args.plot:
            written = plot.explain_plot(model, x, args.plot, labels=args.labels,
                                        target=args.target, rule=args.rule, layers=args.layers,
                                        layers_out_path=args.plot_layers)
        else:
            figure = plot.layer_figure(model, x, labels=args.labels, target=args.target,
                                       rule=args.rule, layers=args.layers)
            written = [plot.save(figure, args.plot_layers)]
        print(f"plotted      {', '.join(str(p) for p in written)}")
    return 0 if e.checks.passed else 1


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
