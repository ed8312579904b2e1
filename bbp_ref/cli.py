"""The ``bbp-ref`` command.

``bbp-ref explain [MODEL INPUT.npy] [--target K] [--rule R] [--layers ...] [--out F]``
explains one output and prints a summary; with no MODEL it runs on the embedded
default digits model and its sample input. Errors exit with code 2 and one line on
stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from .attribution.rules import RULES
from .defaults import default_input, default_model_path
from .errors import BBpError, InputError
from .explain import Explanation, explain
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
    nodes = commands.add_parser("nodes", help="list a model's canonical nodes")
    nodes.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    return parser


def _read_input(path: str) -> np.ndarray:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {path} as a .npy array (pickles are refused): "
                         f"{exc}") from exc


def _summary(e: Explanation, source: str) -> str:
    batch = np.ndim(e.output) > 0
    rows = [f"model        {source}"]
    if e.stripped:
        rows.append(f"stripped     {', '.join(e.stripped)} (the logits are explained)")
    outputs = np.atleast_1d(e.output)
    targets = np.atleast_1d(e.target)
    biases = np.atleast_1d(e.bias)
    attributions = np.atleast_2d(np.reshape(e.bias_attribution, (len(outputs), -1)))
    for i, (t, out, b) in enumerate(zip(targets, outputs, biases)):
        label = f"example {i}: " if batch else ""
        rows.append(f"{label}target {t}   f_t(x) = {out:.6g}   W^x x = {out - b:.6g}   "
                    f"b^x = {b:.6g}   sum B(x) = {attributions[i].sum():.6g}")
    rows.append(f"rule         {e.rule}")
    rows.append(e.checks.summary())
    return "\n".join(rows)


def _save(path: str, e: Explanation) -> None:
    arrays = {"output": e.output, "target": e.target, "gradient": e.gradient, "bias": e.bias,
              "bias_attribution": e.bias_attribution, "logits": e.logits}
    arrays.update({f"layer_bias/{name}": v for name, v in e.layer_bias.items()})
    try:
        np.savez(path, **arrays)  # type: ignore[arg-type]
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    source = args.model or str(default_model_path())
    if args.command == "nodes":
        for node in load(source).nodes:
            print(f"{node.name:40s} {node.kind:7s} {node.op:30s} {list(node.shape)}")
        return 0
    if args.model is not None and args.input is None:
        raise InputError("give an INPUT.npy file after the model")
    x = default_input() if args.model is None else _read_input(args.input)
    e = explain(source, x, target=args.target, rule=args.rule, layers=args.layers,
                check=not args.no_check)
    print(_summary(e, source))
    if args.out:
        _save(args.out, e)
        print(f"saved        {args.out}")
    return 0 if e.checks.passed else 1


def _fail(message: str) -> int:
    print(f"bbp-ref: error: {' '.join(message.split())}", file=sys.stderr)
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
