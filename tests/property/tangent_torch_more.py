"""The newer ops of `tangent_more_ops` computed by PyTorch in float64 from a layer's
description (not from its ONNX writing), for `tangent_torch`. Where a PyTorch function
does the op (conv_transpose, gather, repeat, expand, einsum) it is used; the rest is
written from the ONNX operator pages (the DepthToSpace/SpaceToDepth reshapes, the Pad
index maps, Resize's interpolation matrices, the recurrent equations). At the kinks the
documented conventions are computed explicitly (docs/math.md §7.3 decision 8, §2
decision 1): a Max/Min tie goes to the first operand, a ReduceMax/Min tie to the lowest
flat index of the reduced block, a HardSigmoid at a bound is saturated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from strategies import Layer
from tangent_more_ops import pad_index, resize_matrix


def more_layer(net: object, layer: Layer, x: object, layers: Callable,
               weight: Callable) -> object:
    """``layers(net, branch, x)`` runs a branch; ``weight(net, name)`` is a float64 tensor."""
    import torch
    from torch.nn import functional as F

    op, key = layer.op, layer.key
    if op == "ConvTranspose":
        dims = len(layer["kernel"])
        conv = (F.conv_transpose1d, F.conv_transpose2d)[dims - 1]
        full = conv(x, weight(net, key + "_W"), None, stride=layer["strides"],
                    groups=layer["group"], dilation=layer["dilations"])
        # output_padding: zeros appended at the end of each axis; then the pads crop
        widths = []
        for p in reversed(layer["output_padding"]):
            widths += [0, p]
        full = F.pad(full, widths)
        pads = layer["pads"]
        crop = tuple(slice(b, n - e) for b, e, n in
                     zip(pads[:dims], pads[dims:], full.shape[2:]))
        y = full[(slice(None), slice(None), *crop)]
        if layer["bias"]:
            y = y + weight(net, key + "_B").reshape(-1, *[1] * dims)
        return y
    if op == "Resize":
        for axis, (n, m) in enumerate(zip(x.shape[1:], layer["out"])):
            matrix = torch.tensor(resize_matrix(n, m, layer))
            x = torch.movedim(torch.tensordot(x, matrix, dims=([axis + 1], [1])), -1,
                              axis + 1)
        return x
    if op == "Pad":
        rank = len(layer["pads"]) // 2
        begin, end = layer["pads"][:rank], layer["pads"][rank:]
        if layer["mode"] == "constant":
            widths = []
            for b, e in zip(reversed(begin), reversed(end)):
                widths += [b, e]
            return F.pad(x, widths, value=layer["value"])
        for axis, (b, e) in enumerate(zip(begin, end)):
            index = pad_index(x.shape[axis + 1], b, e, layer["mode"])
            x = torch.index_select(x, axis + 1, torch.tensor(index))
        return x
    if op == "Split":
        parts = torch.split(x, list(layer["parts"]), dim=layer["axis"] + 1)
        return torch.cat([parts[i] for i in layer["order"]], dim=layer["axis"] + 1)
    if op == "Gather":
        axis = layer["axis"] + 1
        index = torch.tensor([i % x.shape[axis] for i in layer["indices"]])
        y = torch.index_select(x, axis, index)
        return y.squeeze(axis) if layer["scalar"] else y
    if op == "GatherElements":
        index = torch.tensor(net.weights[key + "_idx"])
        return torch.gather(x, layer["axis"] + 1, index.expand(x.shape[0], *index.shape[1:]))
    if op == "Tile":
        return x.repeat(1, *layer["repeats"])
    if op == "Expand":
        (branch,) = layer.branches
        narrow = layers(net, branch, x)
        return narrow.expand(*narrow.shape[:-1], layer["width"])
    if op == "DepthToSpace":
        n, c, h, w = x.shape
        if layer["mode"] == "DCR":
            y = x.reshape(n, 2, 2, c // 4, h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // 4, 2 * h, 2 * w)
    if op == "SpaceToDepth":
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, 4 * c, h // 2, w // 2)
    if op == "MaxMin":
        operands = [layers(net, branch, x) for branch in layer.branches]
        if layer["mirror"]:
            operands = [x, torch.flip(x, dims=[-1])]
        if layer["constant"] is not None:
            operands.insert(layer["position"], weight(net, key + "_c"))
        wins = torch.ge if layer["largest"] else torch.le
        result = operands[0]
        for other in operands[1:]:  # the earlier operand keeps a tie
            result = torch.where(wins(result, other), result, other)
        return result
    if op == "ReduceExtremum":
        axes = [a + 1 for a in layer["axes"]]
        kept = [a for a in range(x.dim()) if a not in axes]
        moved = x.permute(*kept, *axes)
        flat = moved.reshape(*moved.shape[:len(kept)], -1)
        pick = torch.argmax if layer["largest"] else torch.argmin  # documented: the first
        index = pick(flat.detach(), dim=-1, keepdim=True)
        y = torch.gather(flat, -1, index).squeeze(-1)
        if layer["keepdims"]:
            y = y.reshape([1 if a in axes else n for a, n in enumerate(x.shape)])
        return y
    if op == "Where":
        (branch,) = layer.branches
        values = {"x": x}
        if "branch" in layer["sides"]:
            values["branch"] = layers(net, branch, x)
        if "const" in layer["sides"]:
            values["const"] = weight(net, key + "_c")
        cond = torch.tensor(net.weights[key + "_cond"])
        first, second = (values[s] for s in layer["sides"])
        return torch.where(cond, first, second)
    if op == "Einsum":
        equation = layer["equation"]
        terms = equation.split("->")[0].split(",")
        data = iter([x] + [layers(net, branch, x) for branch in layer.branches])
        operands = [next(data) if t.startswith("n") else weight(net, f"{key}_c{i}")
                    for i, t in enumerate(terms)]
        return torch.einsum(equation, *operands)
    if op == "HardSigmoid":
        y = float(np.float32(layer["alpha"])) * x + layer["beta"]
        inside = (y > 0) & (y < 1)  # at a bound: saturated, slope 0
        return torch.where(inside, y, y.detach().clamp(0.0, 1.0))
    if op == "Recurrent":
        return recurrent(net, layer, x, weight)
    raise AssertionError(f"no torch form for {op}")


def recurrent(net: object, layer: Layer, x: object, weight: Callable) -> object:
    """LSTM (gates i, o, f, c), GRU (z, r, h) and RNN with the default activations, as
    the ONNX operator pages write them; ``x`` is [N, steps, features]."""
    import torch

    key, cell, hidden = layer.key, layer["cell"], layer["hidden"]
    directions = 2 if layer["direction"] == "bidirectional" else 1
    W, R = weight(net, key + "_W"), weight(net, key + "_R")
    gates = W.shape[1] // hidden
    B = weight(net, key + "_B") if layer["bias"] else torch.zeros(directions, 2 * gates * hidden,
                                                                  dtype=torch.float64)
    steps = x.shape[1]
    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = layer["direction"] == "reverse" or d == 1
        wb, rb = B[d, :gates * hidden], B[d, gates * hidden:]
        h = torch.zeros(x.shape[0], hidden, dtype=torch.float64)
        c = torch.zeros_like(h)
        outs: list[object] = [None] * steps
        for t in (reversed(range(steps)) if reverse else range(steps)):
            xw = x[:, t] @ W[d].T + wb
            if cell == "RNN":
                h = torch.tanh(xw + h @ R[d].T + rb)
            elif cell == "LSTM":
                i, o, f, g = (xw + h @ R[d].T + rb).split(hidden, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                xz, xr, xh = xw.split(hidden, dim=-1)
                rz, rr, rh = R[d].split(hidden, dim=0)
                bz, br, bh = rb.split(hidden)
                z = torch.sigmoid(xz + h @ rz.T + bz)
                r = torch.sigmoid(xr + h @ rr.T + br)
                if layer["linear_before_reset"]:
                    candidate = torch.tanh(xh + r * (h @ rh.T + bh))
                else:
                    candidate = torch.tanh(xh + (r * h) @ rh.T + bh)
                h = (1 - z) * candidate + z * h
            outs[t] = h
        ys.append(torch.stack(outs, dim=1))  # [N, T, H]
        hs.append(h)
        cs.append(c)
    if layer["output"] == "Y":
        return torch.cat(ys, dim=-1)  # [N, T, D * H]: directions major, as Y's reshape
    return torch.stack(hs if layer["output"] == "Y_h" else cs, dim=1)  # [N, D, H]
