"""Prove the test suite can fail: plant each bug of docs/testing.md's list by hand, run the
suite, record which tests catch it, revert. `python tools/plant_bugs.py [pytest args]`
prints the table that docs/testing.md shows (about a minute per bug);
`python tools/plant_bugs.py --tangent [pytest args]` plants the tangent model's bugs
(docs/math.md §7) instead, `--newer` those of the newer ops (§7.3, §7.7).

Every bug is a one-line source edit, applied to the working tree and always reverted
(even on Ctrl-C)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    old: str
    new: str


BUGS = [
    Bug("LeakyRelu slope sign flipped", "bbp_ref/importer/handlers/activations.py",
        'PiecewiseLinear(float(ctx.attr("alpha", 0.01)))',
        'PiecewiseLinear(-float(ctx.attr("alpha", 0.01)))'),
    Bug("MaxPool ties sent to the last index", "bbp_ref/engine/gates.py",
        "better = values > best", "better = values >= best"),
    Bug("BatchNorm epsilon ignored", "bbp_ref/importer/handlers/elementwise.py",
        "s = gamma / np.sqrt(var + epsilon)", "s = gamma / np.sqrt(var)"),
    Bug("signed rule's fallback dropped (its empty rows lose their mass)",
        "bbp_ref/attribution/rules.py",
        "selected[id(term)] = np.maximum(selected[id(term)], pending)",
        "selected[id(term)] = selected[id(term)]"),
    Bug("Conv vector-Jacobian product off by one in padding", "bbp_ref/engine/affine.py",
        "return [np.moveaxis(self.window.crop(padded), 0, 1)]",
        "return [np.moveaxis(padded[(slice(None), slice(None)) + tuple(slice(b + 1, b + 1 + n) "
        "if b else slice(0, n) for b, n in zip(self.window.pads_begin, "
        "self.window.in_spatial))], 0, 1)]"),
    Bug("final Softmax not stripped", "bbp_ref/importer/signature.py",
        "while tensor in producers and producers[tensor].op_type in HEAD_OPS + _PASS_THROUGH:",
        "while tensor in producers and producers[tensor].op_type in _PASS_THROUGH:"),
    Bug("a bias added twice in a residual Add", "bbp_ref/engine/affine.py",
        "            out = out + _times_sign(c, u)\n        return out",
        "            out = out + _times_sign(c, u)\n        return out if self.bias is None else "
        "out + self.bias"),
]


# The tangent model's engine (docs/math.md §7): what the node cases and the tangent
# properties must catch (docs/testing.md, "Planted bugs in the tangent model").
TANGENT_BUGS = [
    Bug("Tanh derivative sign flipped", "bbp_ref/engine/functions.py",
        "return value, 1.0 - value * value", "return value, value * value - 1.0"),
    Bug("Gelu derivative without its u N(u) term", "bbp_ref/engine/functions.py",
        "return u * cdf, cdf + u * INV_SQRT_2PI * np.exp(-0.5 * u * u)",
        "return u * cdf, cdf"),
    Bug("product's bias with the wrong sign (+u0 v0)", "bbp_ref/engine/products.py",
        "local = Sum([np.broadcast_to(v, shape), np.broadcast_to(u, shape)], -value,",
        "local = Sum([np.broadcast_to(v, shape), np.broadcast_to(u, shape)], value,"),
    Bug("broadcast operand's gradient not summed (first copy taken)",
        "bbp_ref/engine/operator.py",
        "grad = grad.sum(axis=axes, keepdims=True)",
        "grad = grad[tuple(slice(0, 1) if i in axes else slice(None) "
        "for i in range(grad.ndim))]"),
    Bug("Softmax shift applied twice in the Log node", "bbp_ref/engine/elementwise.py",
        "value = np.log(s) + _row_maximum(context, self.axes)",
        "value = np.log(s) + 2 * _row_maximum(context, self.axes)"),
    Bug("Embed fill mass dropped (constant outputs not connected for the rules)",
        "bbp_ref/engine/embed.py",
        "        if not self.fill.any():\n            return self",
        "        if True:\n            return self"),
    Bug("Reciprocal derivative sign flipped", "bbp_ref/engine/functions.py",
        "return value, -value * value", "return value, value * value"),
]


# The newer ops (docs/math.md §7.3, §7.7): what the tangent properties on the newer ops'
# networks must catch (docs/testing.md, "Planted bugs in the newer ops").
NEWER_BUGS = [
    Bug("ConvTranspose output_padding ignored", "bbp_ref/importer/handlers/conv_transpose.py",
        'output_padding = [int(p) for p in ctx.attr("output_padding", [0] * dims)]',
        "output_padding = [0] * dims"),
    Bug("Resize half_pixel without its -1/2 offset", "bbp_ref/importer/handlers/resize.py",
        '    if mode == "half_pixel":\n        return (y + 0.5) / scale - 0.5',
        '    if mode == "half_pixel":\n        return (y + 0.5) / scale'),
    Bug("Max/Min ties sent to the last operand", "bbp_ref/engine/selection.py",
        "winner = stacked.argmax(axis=0) if self.largest else stacked.argmin(axis=0)",
        "winner = len(stacked) - 1 - (stacked[::-1].argmax(axis=0) if self.largest "
        "else stacked[::-1].argmin(axis=0))"),
    Bug("ReduceMax/Min ties sent to the highest index", "bbp_ref/engine/selection.py",
        "winner = blocks.argmax(axis=-1) if self.largest else blocks.argmin(axis=-1)",
        "winner = blocks.shape[-1] - 1 - (blocks[..., ::-1].argmax(axis=-1) if self.largest "
        "else blocks[..., ::-1].argmin(axis=-1))"),
    Bug("DepthToSpace CRD with the block axes swapped", "bbp_ref/importer/handlers/routes_more.py",
        "table = table.reshape(c // (b * b), b, b, h, w).transpose(0, 3, 1, 4, 2)",
        "table = table.reshape(c // (b * b), b, b, h, w).transpose(0, 3, 2, 4, 1)"),
    Bug("Pad reflect repeating the edge (symmetric)", "bbp_ref/importer/handlers/pad.py",
        "table = np.pad(table, widths, mode=mode)",
        "table = np.pad(table, widths, mode='symmetric' if mode == 'reflect' else mode)"),
    Bug("Where's constant condition inverted", "bbp_ref/importer/handlers/routes_more.py",
        "table = np.where(condition, tables[0], tables[1])",
        "table = np.where(~condition, tables[0], tables[1])"),
    Bug("GRU linear_before_reset ignored", "bbp_ref/importer/handlers/recurrent.py",
        'before_reset = bool(ctx.attr("linear_before_reset", 0))', "before_reset = False"),
    Bug("LSTM gates read in the order i, f, o, c", "bbp_ref/importer/handlers/recurrent.py",
        "i_pre, o_pre, f_pre, c_pre = (cell.block(gates, k, name) for k, name in",
        "i_pre, f_pre, o_pre, c_pre = (cell.block(gates, k, name) for k, name in"),
    Bug("Einsum product's bias with the wrong sign", "bbp_ref/engine/einsum.py",
        "local = BilinearEinsum(self.equation, v, u, -value, self.operand_shapes)",
        "local = BilinearEinsum(self.equation, v, u, value, self.operand_shapes)"),
]


def run(bug: Bug, pytest_args: list[str]) -> tuple[list[str], float]:
    path = ROOT / bug.path
    original = path.read_text()
    if original.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: the line to change is not found once in {bug.path}")
    path.write_text(original.replace(bug.old, bug.new))
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--tb=no",
                                 "-p", "no:cacheprovider", *pytest_args],
                                cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE)
    return failed, time.perf_counter() - start


def main() -> None:
    pytest_args = sys.argv[1:]
    bugs = BUGS
    if pytest_args[:1] == ["--tangent"]:
        bugs, pytest_args = TANGENT_BUGS, pytest_args[1:]
    elif pytest_args[:1] == ["--newer"]:
        bugs, pytest_args = NEWER_BUGS, pytest_args[1:]
    print("| planted bug | failing tests | examples |")
    print("| --- | --- | --- |")
    for bug in bugs:
        failed, seconds = run(bug, pytest_args)
        files = sorted({f.split("::")[0] for f in failed})
        examples = ", ".join(f"`{f.split('::', 1)[1]}`" for f in failed[:3])
        print(f"| {bug.name} | {len(failed)} in {', '.join(files) or 'NONE'} | {examples} |",
              flush=True)


if __name__ == "__main__":
    main()
