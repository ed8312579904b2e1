#!/usr/bin/env python3
"""Build the small PyTorch test models and export them to ONNX.

For every model in ``MODELS`` this writes, under ``models/torch/``:

* ``<name>.ts<opset>.onnx``     TorchScript exporter (``dynamo=False``), opsets 9, 13, 17
* ``<name>.dynamo.onnx``        torch.export-based exporter, ``optimize=True``
* ``<name>.dynamo_noopt.onnx``  torch.export-based exporter, ``optimize=False``
* ``<name>.input.npy``          a float32 batch of 3 examples
* ``manifest.json``             every file: model, exporter, opset, shapes, op types, status

All exports have a dynamic batch axis. Every exported file is run in onnxruntime on the
saved input (and on its first example alone, to exercise the dynamic batch axis) and
compared with the PyTorch float32 output. A failed export is recorded in the manifest
(``"status": "failed"`` plus the error) and the script carries on; a numerical mismatch
of a file that did export is an error.

The script is deterministic (fixed seeds per model); re-running it reproduces the files.

Usage:  python3 models/make_torch_models.py
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
OUT = HERE / "torch"
TS_OPSETS = (9, 13, 17)
MAX_BYTES = 200 * 1024
ATOL = 1e-4
RTOL = 1e-4

# Known-unsupported (model, opset) combinations for the TorchScript exporter.
# Keys are (model name, opset); the value says why the combination is skipped.
TS_SKIP: dict[tuple[str, int], str] = {
    # ONNX MaxPool has a ``ceil_mode`` attribute only from opset 10 on. At opset 9 the
    # TorchScript exporter emulates MaxPool2d(ceil_mode=True) by enlarging the end pads
    # (pads=[1, 1, 3, 3] for a 3x3 kernel), which onnxruntime rejects at load time
    # ("Pad should be smaller than kernel"). So conv_variants is exported at 13 and 17 only.
    ("conv_variants", 9): "MaxPool ceil_mode=True needs opset >= 10 "
    "(opset-9 emulation via pads >= kernel is rejected by onnxruntime)",
}


# --------------------------------------------------------------------------- helpers


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Random running stats and affine params; about a third of the gammas negative."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        gamma = torch.rand(c, generator=gen) + 0.5
        sign = torch.ones(c)
        sign[torch.randperm(c, generator=gen)[: max(1, c // 3)]] = -1.0
        bn.weight.copy_(gamma * sign)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random (non-zero) biases everywhere, random BN, random PReLU slopes; eval mode."""
    gen = torch.Generator().manual_seed(seed + 1000)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            randomize_bn(mod, gen)
        elif isinstance(mod, nn.PReLU):
            with torch.no_grad():
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) * 0.8 - 0.3)
        elif isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.bias is not None:
            with torch.no_grad():
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.2)
    if hasattr(model, "tune"):
        model.tune()
    return model.eval()


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
        )

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """1x8x8 -> Conv-BN-ReLU-MaxPool-Conv-ReLU-AvgPool-Flatten-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 6x4x4
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),  # 8x2x2
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


class ResNetBlock(nn.Module):
    """3x6x6 -> stem, identity block, 1x1-conv-shortcut block (stride 2), GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block1 = BasicBlock(8, 8)
        self.block2 = BasicBlock(8, 12, stride=2)  # 12x3x3
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        h = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(h), 1))


class ConvVariants(nn.Module):
    """4x12x12 -> grouped, dilated, strided, depthwise convs; assorted PL activations."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.act1 = nn.LeakyReLU(0.1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.act2 = nn.PReLU(num_parameters=8)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 8x6x6
        self.act3 = nn.ReLU6()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act4 = nn.Hardtanh(-0.5, 0.5)
        # 6x6 -> ceil((6 + 2 - 3) / 2) + 1 = 4 (floor mode would give 3); the last window
        # starts inside the input, so it is kept and reads the right padding.
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 8x4x4
        self.bn = nn.BatchNorm2d(8)  # a BN that follows no conv: not foldable
        self.avgpool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)  # 8x4x4
        self.fc = nn.Linear(128, 5)

    @torch.no_grad()
    def tune(self) -> None:
        """Scale two convs so the clipping activations really saturate on the saved input:
        about 19% of ReLU6 inputs are > 6 and about 12% of Hardtanh inputs lie on each side
        of [-0.5, 0.5]."""
        self.strided.weight.mul_(20.0)
        self.strided.bias.mul_(20.0)
        self.depthwise.weight.mul_(0.5)

    def forward(self, x):
        h = self.act1(self.grouped(x))
        h = self.act2(self.dilated(h))
        h = self.act3(self.strided(h))
        h = self.act4(self.depthwise(h))
        h = self.avgpool(self.bn(self.maxpool(h)))
        return self.fc(torch.flatten(h, 1))


class ConcatBranches(nn.Module):
    """3x6x6 -> two conv branches, cat on channels, Dropout, view/transpose, Flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(2)  # 8x3x3
        self.drop = nn.Dropout(0.3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(72, 5)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1)  # 8x6x6
        h = self.drop(self.pool(h))
        h = h.view(h.size(0), 8, 9).transpose(1, 2)  # reshape + transpose: 9x8
        return self.fc(self.flatten(h))


class Conv1dNet(nn.Module):
    """2x12 -> Conv1d-BN-ReLU-MaxPool1d-Conv1d-ReLU-AvgPool1d-Flatten-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 6, 3, padding=1),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.MaxPool1d(2),  # 6x6
            nn.Conv1d(6, 8, 3),  # 8x4
            nn.ReLU(),
            nn.AvgPool1d(2),  # 8x2
            nn.Flatten(),
            nn.Linear(16, 4),
        )

    def forward(self, x):
        return self.net(x)


class Conv3dNet(nn.Module):
    """2x4x4x4 -> Conv3d-BN-ReLU-MaxPool3d-Conv3d-ReLU-AdaptiveAvgPool3d(1)-Flatten-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(2, 4, 3, padding=1),
            nn.BatchNorm3d(4),
            nn.ReLU(),
            nn.MaxPool3d(2),  # 4x2x2x2
            nn.Conv3d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(6, 3),
        )

    def forward(self, x):
        return self.net(x)


class SoftmaxHead(nn.Module):
    """MLP (10 features) ending in Softmax or LogSoftmax over the classes."""

    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
        self.head = nn.LogSoftmax(dim=1) if log else nn.Softmax(dim=1)

    def forward(self, x):
        return self.head(self.net(x))


# name -> (constructor, input shape without batch)
MODELS: dict[str, tuple] = {
    "mlp": (MLP, (10,)),
    "cnn": (CNN, (1, 8, 8)),
    "resnet_block": (ResNetBlock, (3, 6, 6)),
    "conv_variants": (ConvVariants, (4, 12, 12)),
    "concat_branches": (ConcatBranches, (3, 6, 6)),
    "conv1d": (Conv1dNet, (2, 12)),
    "conv3d": (Conv3dNet, (2, 4, 4, 4)),
    "softmax_head": (lambda: SoftmaxHead(log=False), (10,)),
    "logsoftmax_head": (lambda: SoftmaxHead(log=True), (10,)),
}


# --------------------------------------------------------------------------- export


def _quiet(fn, *args, **kwargs):
    """Run an exporter with its progress chatter captured (returned on failure)."""
    buf = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(buf), redirect_stderr(buf):
        warnings.simplefilter("ignore")
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # recorded in the manifest, not hidden
            return f"{type(exc).__name__}: {exc}".strip()
    return None


def export_ts(model, x, path: Path, opset: int):
    return _quiet(
        torch.onnx.export,
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        do_constant_folding=True,
    )


def export_dynamo(model, x, path: Path, optimize: bool):
    return _quiet(
        torch.onnx.export,
        model,
        (x,),
        str(path),
        dynamo=True,
        optimize=optimize,
        external_data=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )


def strip_nondeterministic(path: Path) -> None:
    """Drop metadata that records local file paths / stack traces, so re-runs match."""
    m = onnx.load(str(path))
    changed = False

    def clean(props):
        nonlocal changed
        keep = [p for p in props if "stack_trace" not in p.key]
        if len(keep) != len(props):
            changed = True
            del props[:]
            props.extend(keep)

    def walk(graph):
        for n in graph.node:
            clean(n.metadata_props)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(m.graph)
    for f in m.functions:
        for n in f.node:
            clean(n.metadata_props)
    if changed:
        onnx.save(m, str(path))


def op_types(m: onnx.ModelProto) -> list[str]:
    ops: set[str] = set()

    def walk(nodes):
        for n in nodes:
            ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g.node)

    walk(m.graph.node)
    for f in m.functions:  # local functions (none expected, but list their bodies too)
        walk(f.node)
    return sorted(ops)


def check(path: Path, x: np.ndarray, ref: np.ndarray, ref1: np.ndarray) -> tuple[dict, float]:
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    out = sess.run(None, {iname: x})[0]
    out1 = sess.run(None, {iname: x[:1]})[0]  # dynamic batch axis
    assert out.shape == ref.shape, (path.name, out.shape, ref.shape)
    diff = float(max(np.max(np.abs(out - ref)), np.max(np.abs(out1 - ref1))))
    assert np.allclose(out, ref, atol=ATOL, rtol=RTOL), (path.name, diff)
    assert np.allclose(out1, ref1, atol=ATOL, rtol=RTOL), (path.name, diff)
    size = path.stat().st_size
    assert size < MAX_BYTES, (path.name, size)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    batch_dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    return (
        {
            "opset": opset,
            "bytes": size,
            "op_types": op_types(m),
            "dynamic_batch": bool(batch_dim.dim_param),
            "max_abs_diff": diff,
        },
        diff,
    )


def main() -> int:
    torch.set_num_threads(1)
    ort.set_default_logger_severity(4)  # the expected opset-9 load failure is reported below
    logging.getLogger("torch").setLevel(logging.ERROR)
    os.environ.setdefault("TORCH_LOGS", "")
    OUT.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "atol": ATOL,
        "rtol": RTOL,
        "files": [],
    }
    failures = 0
    for idx, (name, (ctor, in_shape)) in enumerate(MODELS.items()):
        seed = 1234 + idx
        torch.manual_seed(seed)
        model = randomize(ctor(), seed)
        gen = torch.Generator().manual_seed(seed + 2000)
        x = torch.randn((3, *in_shape), generator=gen, dtype=torch.float32)
        with torch.no_grad():
            ref = model(x).numpy()
            ref1 = model(x[:1]).numpy()
        x_np = x.numpy().astype(np.float32)
        np.save(OUT / f"{name}.input.npy", x_np)
        n_params = sum(p.numel() for p in model.parameters())
        common = {
            "model": name,
            "input_shape": list(in_shape),
            "output_shape": list(ref.shape[1:]),
            "input_file": f"{name}.input.npy",
            "n_params": n_params,
        }
        print(f"== {name}: params={n_params} input={list(in_shape)} output={list(ref.shape[1:])}")

        # (file name, exporter label, TorchScript opset or None, dynamo optimize flag)
        jobs = [(f"{name}.ts{o}.onnx", "torchscript", o, None) for o in TS_OPSETS]
        jobs.append((f"{name}.dynamo.onnx", "dynamo", None, True))
        jobs.append((f"{name}.dynamo_noopt.onnx", "dynamo_noopt", None, False))

        for fname, exporter, opset, optimize in jobs:
            path = OUT / fname
            entry = dict(common, file=fname, exporter=exporter, opset=opset)
            if path.exists():
                path.unlink()
            if exporter == "torchscript":
                err = export_ts(model, x, path, opset)
            else:
                err = export_dynamo(model, x, path, optimize)
            if err is None and not path.exists():
                err = "no file written"
            if err is None and exporter != "torchscript":
                strip_nondeterministic(path)
            if err is None:
                try:
                    info, diff = check(path, x_np, ref, ref1)
                except Exception as exc:
                    err = f"verification failed: {type(exc).__name__}: {exc}".strip()
            if exporter == "torchscript" and (name, opset) in TS_SKIP:
                # Known-bad combination: we still ran it above, so the skip list stays honest.
                reason = TS_SKIP[(name, opset)]
                if path.exists():
                    path.unlink()
                entry.update(status="skipped", reason=reason, error=err)
                manifest["files"].append(entry)
                print(f"  {fname:40s} SKIPPED ({reason})")
                print(f"  {'':40s}   observed: {(err or 'no error (remove from TS_SKIP?)')[:160]}")
                continue
            if err is not None:
                failures += 1
                if path.exists():
                    path.unlink()
                entry.update(status="failed", error=err)
                manifest["files"].append(entry)
                print(f"  {fname:40s} FAILED: {err[:300]}")
                continue
            entry.update(info, status="ok")
            manifest["files"].append(entry)
            print(f"  {fname:40s} opset={info['opset']:2d} {info['bytes']:6d} B "
                  f"maxdiff={diff:.2e} ops={' '.join(info['op_types'])}")

    with open(OUT / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=False)
        fh.write("\n")
    n = len(manifest["files"])
    print(f"wrote {OUT / 'manifest.json'} ({n} entries, {failures} failed exports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
