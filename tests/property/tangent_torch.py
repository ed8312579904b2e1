"""A `TangentNet` computed by PyTorch in float64, from its description (not from its ONNX
writing): the independent autodiff of invariant 8. Needs torch (marker ``torch``). The
newer ops of `tangent_more_ops` are in `tangent_torch_more`."""

from __future__ import annotations

import numpy as np
from strategies import Layer
from tangent_strategies import BOUNDED_FIRST, LAYER_NORM_EPSILON, SMOOTH_FUNCTIONS, TangentNet
from tangent_torch_more import more_layer


def torch_forward(net: TangentNet, x: object) -> object:
    """`f(x)` for a float64 torch tensor ``x`` [batch, *input_shape]."""
    return _layers(net, net.layers, x)


def torch_jacobian(net: TangentNet, x: np.ndarray) -> np.ndarray:
    """Per example, the Jacobian of the flattened output by autograd: [N, O, *input]."""
    import torch

    rows = []
    for example in np.asarray(x, dtype=np.float64):
        def one(t: object) -> object:
            return torch_forward(net, t.unsqueeze(0)).reshape(-1)
        rows.append(torch.autograd.functional.jacobian(
            one, torch.tensor(example, dtype=torch.float64)).numpy())
    return np.stack(rows)


def _weight(net: TangentNet, name: str) -> object:
    import torch

    return torch.tensor(net.weights[name].astype(np.float64))


def _layers(net: TangentNet, layers: tuple[Layer, ...], x: object) -> object:
    for layer in layers:
        x = _layer(net, layer, x)
    return x


def _smooth(fn: str, x: object) -> object:
    import torch
    from torch.nn import functional as F

    if fn in BOUNDED_FIRST:
        x = torch.tanh(x)
    attrs = SMOOTH_FUNCTIONS.get(fn, {})
    table = {
        "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softplus": F.softplus,
        "Softsign": F.softsign, "Elu": lambda t: F.elu(t, alpha=attrs.get("alpha", 1.0)),
        "Selu": _selu, "Celu": lambda t: F.celu(t, alpha=attrs.get("alpha", 1.0)),
        "Erf": torch.erf, "Exp": torch.exp, "Sin": torch.sin, "Cos": torch.cos,
        "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
        "Gelu": F.gelu, "GeluTanh": lambda t: F.gelu(t, approximate="tanh"),
        "HardSwish": F.hardswish, "Mish": F.mish,
    }
    return table[fn](x)


def _selu(x: object) -> object:
    """Selu with ONNX's default constants (float32 numbers; torch's are float64)."""
    import torch

    alpha, gamma = 1.67326319217681884765625, 1.05070102214813232421875
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def _layer(net: TangentNet, layer: Layer, x: object) -> object:
    import torch
    from torch.nn import functional as F

    op, key = layer.op, layer.key
    if op == "Linear":
        y = x @ _weight(net, key + "_W")
        return y + _weight(net, key + "_B") if layer["bias"] else y
    if op == "Gate":
        return {"Relu": F.relu, "LeakyRelu": lambda t: F.leaky_relu(t, 0.25),
                "Abs": torch.abs}[layer["gate"]](x)
    if op == "Smooth":
        return _smooth(layer["fn"], x)
    if op == "Positive":
        positive = x * x + 0.5
        fn = layer["fn"]
        if fn == "Pow":
            return positive ** layer["exponent"]
        return {"Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal}[fn](
            positive)
    if op == "Product":
        a, b = (_layers(net, branch, x) for branch in layer.branches)
        return a * b
    if op == "MatMulProduct":
        q, k = (_layers(net, branch, x) for branch in layer.branches)
        return q @ k.transpose(1, 2)
    if op == "Divide":
        numerator = _layers(net, layer.branches[0], x)
        return numerator / (F.softplus(_layers(net, layer.branches[1], x)) + 0.5)
    if op == "SoftmaxMid":
        return (F.log_softmax if layer["log"] else F.softmax)(x, dim=-1)
    if op == "ConcatConst":
        c = _weight(net, key + "_c")
        tokens = c.expand(x.shape[0], *c.shape[1:])
        parts = [tokens, x] if layer["const_first"] else [x, tokens]
        return torch.cat(parts, dim=layer["axis"] + 1)
    if op == "Composite":
        return _smooth(layer["kind"], x)
    if op == "LayerNorm":
        return F.layer_norm(x, (x.shape[-1],), _weight(net, key + "_scale"),
                            _weight(net, key + "_bias"), eps=LAYER_NORM_EPSILON)
    if op == "Residual":
        (branch,) = layer.branches
        return x + _layers(net, branch, x)
    return more_layer(net, layer, x, _layers, _weight)

