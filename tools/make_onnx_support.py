"""Write docs/onnx-support.md from the importer's handler registry and onnx's operator
schemas, so the table always matches the code. `python tools/make_onnx_support.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import onnx.defs

from bbp_ref.importer.context import supported_ops
from bbp_ref.importer.handlers.smooth import FUNCTIONS
from bbp_ref.importer.loading import MIN_OPSET

# The canonical node kinds an op imports as (docs/math.md §2 and §7). The element-wise
# functions come from the function table (a smooth gate, or a piecewise-linear one); every
# other op is listed here, and `test_docs` fails on a supported op with no kind.
KINDS = {
    "affine": "Gemm Conv BatchNormalization Add Sub Neg Sum AveragePool GlobalAveragePool "
              "ReduceMean ReduceSum ConvTranspose",
    "affine or product": "Mul MatMul Einsum",
    "affine or product, with a Reciprocal": "Div",
    "affine or route": "Pad Resize Upsample Where",
    "gate": "Relu LeakyRelu PRelu Clip MaxPool GlobalMaxPool Max Min ReduceMax ReduceMin",
    "affine + gate": "HardSigmoid",
    "smooth gate": "Pow",
    "route": "Flatten Reshape Transpose Squeeze Unsqueeze Slice Split Tile Expand Gather "
             "GatherElements DepthToSpace SpaceToDepth",
    "route, or affine with constants": "Concat",
    "pass-through": "Identity Dropout Cast CastLike",
    "constant": "Shape Size",
    "output head, or expanded": "Softmax LogSoftmax",
    "expanded": "ReduceLogSumExp LayerNormalization RMSNormalization InstanceNormalization "
                "GroupNormalization MeanVarianceNormalization LpNormalization LRN ReduceL1 "
                "ReduceL2 ReduceSumSquare ReduceLogSum",
    "unrolled": "LSTM GRU RNN",
}
PIECEWISE_LINEAR_FUNCTIONS = ("Abs", "ThresholdedRelu")


def kind_of(op: str) -> str:
    """The kind column for ``op`` ("?" if nobody declared it)."""
    if op in FUNCTIONS:
        return "gate" if op in PIECEWISE_LINEAR_FUNCTIONS else "smooth gate"
    return {o: kind for kind, ops in KINDS.items() for o in ops.split()}.get(op, "?")


NOTES = {
    "Gemm": "data input A only (a data B would mix examples), transA=0; alpha, beta, transB; "
            "C of shape [M], [1, M] or scalar",
    "Conv": "1-, 2-, 3-D; strides, pads, dilations, group, auto_pad; bias per output channel",
    "BatchNormalization": "inference only; folded into a directly preceding Conv/Gemm/MatMul, "
                          "else a diagonal affine node; spatial=0 (opset < 9) supported",
    "Add": "with a constant (broadcast) or of two data tensors; opset-6 broadcast/axis",
    "Sub": "as Add",
    "Mul": "by a constant (affine) or of two data tensors of the same rank (a product node)",
    "Div": "by a non-zero constant, or by a data tensor: Mul by its Reciprocal",
    "Sum": "data tensors and constants",
    "AveragePool": "pads, strides, dilations (19+), ceil_mode, count_include_pad; a zero Pad "
                   "before it folds into its padding",
    "ReduceMean": "over non-batch axes (attribute < 18, input 18+), keepdims",
    "ReduceSum": "over non-batch axes (attribute < 13, input 13+), keepdims",
    "Clip": "attribute form (< 11) and input form (11+); Relu6, HardTanh; saturation gives a "
            "local bias",
    "PRelu": "slope broadcast to the data (per channel [C, 1, 1], scalar, ...)",
    "MaxPool": "1-3-D, pads, strides, dilations, ceil_mode; ties to the lowest index; the "
               "Indices output is rejected",
    "Flatten": "axis >= 1 with the leading per-example dims of size 1",
    "Reshape": "constant target (folded shape subgraphs included) keeping the batch axis, "
               "or merging it into another axis as attention exports do (`[T, N * H, Dh]`, "
               "`[T * N, E]`; placed by the target for a batch of one and of two, "
               "docs/math.md §7.5)",
    "Transpose": "any perm; moving the batch axis makes no node (docs/math.md §7.5)",
    "Squeeze": "attribute (< 13) and input (13+) axes",
    "Unsqueeze": "attribute (< 13) and input (13+) axes",
    "Concat": "axis != 0; of data tensors (route), or with constants (affine: the constants "
              "are local bias spread over the data input, docs/math.md §7.2 decision 6); "
              "of data along a merged batch axis (docs/math.md §7.5)",
    "Slice": "constant starts/ends/axes/steps (attribute form < 10), off the batch axis; "
             "along a merged batch axis only whole per-example blocks (docs/math.md §7.5)",
    "Dropout": "inference (training_mode false, mask unused)", "Cast": "to a float type",
    "Pad": "every mode (constant: an Embed node whose border is local bias; reflect, edge, "
           "wrap: a route); negative pads crop; a zero Pad read only by Convs and "
           "AveragePools folds into their padding; never along a merged batch axis",
    "Resize": "constant scales or sizes (axes, keep_aspect_ratio_policy); nearest (a route), "
              "linear and cubic (affine; antialias, exclude_outside, cubic_coeff_a); every "
              "coordinate_transformation_mode; tf_crop_and_resize extrapolates constants",
    "Upsample": "constant scales; nearest and linear (asymmetric, as Resize 10)",
    "ConvTranspose": "1-, 2-, 3-D; strides, pads, dilations, group, auto_pad, output_padding, "
                     "output_shape (not larger than the natural size); outputs no input "
                     "reaches are the bias alone",
    "Einsum": "one data operand (affine) or two (a product); the batch label leads the output",
    "Where": "constant condition; X and Y data or constants",
    "Max": "data tensors and constants, broadcast; ties to the first operand",
    "Min": "as Max", "ReduceMax": "over non-batch axes; ties to the lowest index",
    "ReduceMin": "as ReduceMax",
    "Split": "every opset form (split attribute/input, num_outputs), off the batch axis; "
             "along a merged batch axis only whole per-example blocks (docs/math.md §7.5)",
    "Tile": "constant repeats, 1 on the batch axis", "Expand": "of data; constant shape",
    "Gather": "constant indices, axis != 0; along a merged batch axis only indices taking "
              "whole per-example blocks (docs/math.md §7.5)",
    "GatherElements": "constant indices equal for every example, axis != 0",
    "DepthToSpace": "DCR and CRD", "SpaceToDepth": "",
    "Softmax": "as the last op: stripped, the logits are explained; elsewhere Exp, ReduceSum, "
               "Reciprocal, Mul (stable)",
    "LogSoftmax": "as the last op: stripped; elsewhere x - Log(ReduceSum(Exp(x))) (stable)",
    "ReduceLogSumExp": "Log(ReduceSum(Exp(x))) (stable), over non-batch axes",
    "MatMul": "one constant operand (affine), or two data tensors of the same rank (a product)",
    "Pow": "constant exponent; the derivative at 0 is its limit",
    "Log": "positive inputs", "Sqrt": "positive inputs", "Reciprocal": "non-zero inputs",
    "Gelu": "exact and tanh", "HardSigmoid": "alpha u + beta (affine) then Clip to [0, 1]",
    "Exp": "inputs up to 709", "Abs": "slope 0 at 0", "ThresholdedRelu": "slope 0 at alpha",
    "HardSwish": "one smooth gate (piecewise quadratic); slopes at -3 and 3 as autograd",
    "Shape": "of a data tensor: a constant (batch dim taken as 1)",
    "LSTM": "unrolled over the sequence (math.md §7.7): all directions, layout 0/1, "
            "initial states, peepholes, clip, input_forget, listed activations; "
            "sequence_lens equal to the sequence length",
    "GRU": "as LSTM; linear_before_reset", "RNN": "as LSTM",
    "LayerNormalization": "(x - m) / Sqrt(E[(x - m)^2] + eps) * Scale + B (math.md §7.4); "
                          "Mean and InvStdDev outputs; constant Scale and B",
    "InstanceNormalization": "as LayerNormalization over the spatial axes",
    "RMSNormalization": "x * Reciprocal(Sqrt(ReduceMean(x^2) + eps)) * scale; constant scale",
    "GroupNormalization": "opset 21 (18's per-group scale is deprecated: the checker refuses "
                          "it); Reshape to [G, -1], normalize, Reshape back",
    "MeanVarianceNormalization": "(x - m) / (Sqrt(E[(x - m)^2]) + 1e-9); axes without the "
                                 "batch axis (the default [0, 2, 3] is refused)",
    "LpNormalization": "p = 1 or 2: x * Reciprocal(norm)",
    "LRN": "x * (bias + alpha/size * channel-window-sum(x^2))^(-beta)",
    "ReduceL1": "ReduceSum(Abs(x)) (piecewise linear), over non-batch axes",
    "ReduceL2": "Sqrt(ReduceSum(x^2)), over non-batch axes",
    "ReduceSumSquare": "ReduceSum(x^2), over non-batch axes",
    "ReduceLogSum": "Log(ReduceSum(x)), over non-batch axes",
}


def versions(op: str) -> list[int]:
    newest = onnx.defs.onnx_opset_version()
    found = []
    for opset in range(MIN_OPSET, newest + 1):
        try:
            since = onnx.defs.get_schema(op, opset).since_version
        except onnx.defs.SchemaError:
            continue
        if since not in found:
            found.append(since)
    return found


def render() -> str:
    order = [*KINDS, "?"]
    lines = [
        "# ONNX support",
        "",
        "Generated by `python tools/make_onnx_support.py` from the importer's handler",
        f"registry and the operator schemas of onnx {onnx.__version__} (opsets {MIN_OPSET} to "
        f"{onnx.defs.onnx_opset_version()}); a test keeps it in sync.",
        "",
        "Kinds (docs/math.md §2 and §7): affine, gate and route nodes are piecewise linear;",
        "smooth gates and products make the explanation a tangent model at `x` (§7).",
        "",
        "Every listed op is supported at every opset from 6 to the newest: the versions column",
        "lists the op versions (the opsets where its definition changed) that the handlers",
        "cover. Any op, supported or not, whose inputs are all constants is folded to a",
        "constant with `onnx.reference` at import. If (with a constant condition), Loop",
        "(constant trip count) and Scan are inlined or unrolled (docs/math.md §7.8). Any",
        "other op raises `UnsupportedOpError`.",
        "",
        "| op | kind | op versions | notes |",
        "| --- | --- | --- | --- |",
    ]
    for op in sorted(supported_ops(), key=lambda o: (order.index(kind_of(o)), o)):
        listed = ", ".join(str(v) for v in versions(op))
        lines.append(f"| {op} | {kind_of(op)} | {listed} | {NOTES.get(op, '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "onnx-support.md"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == text else 1)
    target.write_text(text)
