"""Write docs/onnx-support.md from the importer's handler registry and onnx's operator
schemas, so the table always matches the code. `python tools/make_onnx_support.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import onnx.defs

from bbp_ref.importer.context import supported_ops
from bbp_ref.importer.loading import MIN_OPSET

KINDS = {
    "affine": "Gemm MatMul Conv BatchNormalization Add Sub Mul Div Neg Sum AveragePool "
              "GlobalAveragePool ReduceMean ReduceSum ConvTranspose Einsum",
    "affine or route": "Pad Resize Upsample Where",
    "gate": "Relu LeakyRelu PRelu Clip MaxPool GlobalMaxPool Abs ThresholdedRelu HardSigmoid "
            "Max Min ReduceMax ReduceMin",
    "smooth gate": "Sigmoid Tanh Softplus Softsign Elu Selu Celu Erf Exp Log Sqrt Reciprocal "
                   "Pow Sin Cos Atan Sinh Cosh Asinh Mish Gelu HardSwish",
    "expanded": "Softmax LogSoftmax ReduceLogSumExp LayerNormalization RMSNormalization "
                "InstanceNormalization "
                "GroupNormalization MeanVarianceNormalization LpNormalization LRN ReduceL1 "
                "ReduceL2 ReduceSumSquare ReduceLogSum",
    "route": "Flatten Reshape Transpose Squeeze Unsqueeze Concat Slice Split Tile Expand "
             "Gather GatherElements DepthToSpace SpaceToDepth",
    "pass-through": "Identity Dropout Cast CastLike",
    "constant": "Shape Size",
    "unrolled": "LSTM GRU RNN",
}
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
    "Reshape": "constant target (folded shape subgraphs included) keeping the batch axis",
    "Transpose": "any perm; moving the batch axis makes no node (docs/math.md §7.5)",
    "Squeeze": "attribute (< 13) and input (13+) axes",
    "Unsqueeze": "attribute (< 13) and input (13+) axes",
    "Concat": "of data tensors and constants (the constants are local bias), axis != 0",
    "Slice": "constant starts/ends/axes/steps (attribute form < 10), off the batch axis",
    "Dropout": "inference (training_mode false, mask unused)", "Cast": "to a float type",
    "Pad": "every mode (constant: an Embed node whose border is local bias; reflect, edge, "
           "wrap: a route); negative pads crop; a zero Pad read only by Convs and "
           "AveragePools folds into their padding",
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
    "Split": "every opset form (split attribute/input, num_outputs), off the batch axis",
    "Tile": "constant repeats, 1 on the batch axis", "Expand": "of data; constant shape",
    "Gather": "constant indices, axis != 0",
    "GatherElements": "constant indices equal for every example, axis != 0",
    "DepthToSpace": "DCR and CRD", "SpaceToDepth": "",
    "Softmax": "as the last op: stripped, the logits are explained; elsewhere Exp, ReduceSum, "
               "Reciprocal, Mul (stable)",
    "LogSoftmax": "as the last op: stripped; elsewhere x - Log(ReduceSum(Exp(x))) (stable)",
    "ReduceLogSumExp": "Log(ReduceSum(Exp(x))) (stable), over non-batch axes",
    "MatMul": "one constant operand (affine), or two data tensors of the same rank (a product)",
    "Pow": "constant exponent; the derivative at 0 is its limit",
    "Log": "positive inputs", "Sqrt": "positive inputs", "Reciprocal": "non-zero inputs",
    "Gelu": "exact and tanh", "HardSigmoid": "affine node and Clip",
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
    kind_of = {op: kind for kind, ops in KINDS.items() for op in ops.split()}
    lines = [
        "# ONNX support",
        "",
        "Generated by `python tools/make_onnx_support.py` from the importer's handler",
        f"registry and the operator schemas of onnx {onnx.__version__} (opsets {MIN_OPSET} to "
        f"{onnx.defs.onnx_opset_version()}); a test keeps it in sync.",
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
    for op in sorted(supported_ops(), key=lambda o: (list(KINDS).index(kind_of.get(o, "route")),
                                                     o)):
        listed = ", ".join(str(v) for v in versions(op))
        lines.append(f"| {op} | {kind_of.get(op, '?')} | {listed} | {NOTES.get(op, '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "onnx-support.md"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == text else 1)
    target.write_text(text)
