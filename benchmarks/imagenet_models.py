"""Build ImageNet-sized ResNet-50 and VGG-16 ONNX models with random weights.

The models are written directly with ``onnx.helper`` (opset 17), so no deep-learning
framework is needed.  They follow the torchvision layouts:

* ResNet-50: 7x7/2 stem conv, BatchNormalization, Relu, 3x3/2 MaxPool (pad 1),
  bottleneck stages [3, 4, 6, 3] (expansion 4, stride on the 3x3 conv, 1x1 projection
  shortcut + BatchNormalization on the first block of each stage),
  GlobalAveragePool, Flatten, Gemm 2048 -> 1000.  Convolutions have no bias (as in
  torchvision); every BatchNormalization is kept as a node of its own.
* VGG-16 (configuration "D", no batch norm): 13 3x3 convs (pad 1, with bias) + Relu,
  5 MaxPools 2x2/2, Flatten, Gemm 25088 -> 4096, Relu, Gemm 4096 -> 4096, Relu,
  Gemm 4096 -> 1000.  Dropout is omitted (it is the identity at inference) and so is
  torchvision's AdaptiveAvgPool2d((7, 7)), which is the identity for 224x224 inputs.

Input ``input`` is float32 ``['N', 3, 224, 224]``; output ``logits`` is ``['N', 1000]``.

Weights are deterministic for a given ``seed`` (numpy ``default_rng``): He-normal
conv / Gemm weights (std = sqrt(2 / fan_in)), small random biases (N(0, 0.01)), and
BatchNormalization with gamma ~ U[0.5, 1.5], beta ~ N(0, 0.1), running mean ~ N(0, 0.1),
running var ~ U[0.5, 1.5], epsilon 1e-5.  Because such BatchNormalizations do not
normalise, ResNet-50's conv weights are additionally rescaled, one scalar per conv, so
that each conv output has unit RMS on two random images (see ``resnet50``); VGG-16
needs no such step.  Activations and logits of a random N(0, 1) input are O(1) in
both models.  The weights carry no meaning: the models exist to benchmark an
explainer on realistically sized graphs.

Command line::

    python benchmarks/imagenet_models.py [--out DIR] [--seed S] [--no-check]

writes ``resnet50.onnx`` and ``vgg16.onnx`` into DIR (default ``benchmarks/.cache``),
then runs both with onnxruntime on a random 1x3x224x224 input and prints the timings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))  # however this module is imported
import tangent_models  # noqa: E402

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"

BIAS_STD = 0.01
BN_EPS = 1e-5
CALIB_BATCH = 2
CALIB_STREAM = 1  # rng stream id of the calibration images


def _conv_np(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Plain numpy Conv (group 1, no bias), NCHW; only used to calibrate weight scales."""
    k = w.shape[-1]
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    if k == 1:
        cols = x[:, :, ::stride, ::stride]
        return np.einsum("nchw,oc->nohw", cols, w[:, :, 0, 0], optimize=True)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # [N, C, Ho, Wo, k, k]
    return np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _maxpool_np(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride].max(axis=(4, 5))


class _GraphBuilder:
    """Collects nodes and initializers; draws all weights from one seeded generator."""

    def __init__(self, seed: int, calibrate: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        # With `calibrate`, every op is also evaluated in numpy on a small batch of
        # random images (drawn from their own stream, so the weights do not depend on
        # it), and each conv's He-normal weight is rescaled by one scalar so that its
        # output has unit RMS on that batch (LSUV-style data-dependent init).
        self.vals: dict[str, np.ndarray] | None = None
        if calibrate:
            crng = np.random.default_rng([seed, CALIB_STREAM])
            shape = (CALIB_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
            self.vals = {INPUT_NAME: crng.standard_normal(shape, dtype=np.float32)}

    # -- weights ---------------------------------------------------------------
    def _init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def _he_normal(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        w = self.rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / fan_in))
        return w

    def _bias(self, n: int) -> np.ndarray:
        return (BIAS_STD * self.rng.standard_normal(n)).astype(np.float32)

    # -- ops -------------------------------------------------------------------
    def conv(
        self,
        name: str,
        x: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        pad: int = 0,
        bias: bool = False,
    ) -> str:
        w = self._he_normal((cout, cin, k, k), cin * k * k)
        b = self._bias(cout) if bias else None
        out = f"{name}.out"
        if self.vals is not None:
            y = _conv_np(self.vals[x], w, stride, pad)
            scale = np.float32(1.0 / np.sqrt(np.mean(np.square(y, dtype=np.float64))))
            w *= scale
            y *= scale
            if b is not None:
                y += b[:, None, None]
            self.vals[out] = y
        inputs = [x, self._init(f"{name}.weight", w)]
        if b is not None:
            inputs.append(self._init(f"{name}.bias", b))
        self.nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
                dilations=[1, 1],
                group=1,
            )
        )
        return out

    def bn(self, name: str, x: str, c: int) -> str:
        rng = self.rng
        p = {
            "weight": rng.uniform(0.5, 1.5, c),
            "bias": 0.1 * rng.standard_normal(c),
            "running_mean": 0.1 * rng.standard_normal(c),
            "running_var": rng.uniform(0.5, 1.5, c),
        }
        out = f"{name}.out"
        if self.vals is not None:
            s = (p["weight"] / np.sqrt(p["running_var"] + BN_EPS)).astype(np.float32)
            t = (p["bias"] - s * p["running_mean"]).astype(np.float32)
            self.vals[out] = self.vals[x] * s[:, None, None] + t[:, None, None]
        scale, beta, mean, var = (self._init(f"{name}.{k}", v) for k, v in p.items())
        self.nodes.append(
            helper.make_node(
                "BatchNormalization",
                [x, scale, beta, mean, var],
                [out],
                name=name,
                epsilon=BN_EPS,
                momentum=0.9,
            )
        )
        return out

    def relu(self, name: str, x: str) -> str:
        out = f"{name}.out"
        if self.vals is not None:
            self.vals[out] = np.maximum(self.vals[x], 0)
        self.nodes.append(helper.make_node("Relu", [x], [out], name=name))
        return out

    def maxpool(self, name: str, x: str, k: int, stride: int, pad: int = 0) -> str:
        out = f"{name}.out"
        if self.vals is not None:
            self.vals[out] = _maxpool_np(self.vals[x], k, stride, pad)
        self.nodes.append(
            helper.make_node(
                "MaxPool",
                [x],
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        return out

    def add(self, name: str, a: str, b: str) -> str:
        out = f"{name}.out"
        if self.vals is not None:
            self.vals[out] = self.vals[a] + self.vals[b]
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=name))
        return out

    def global_avgpool(self, name: str, x: str) -> str:
        out = f"{name}.out"
        if self.vals is not None:
            self.vals[out] = self.vals[x].mean(axis=(2, 3), keepdims=True)
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [out], name=name))
        return out

    def flatten(self, name: str, x: str) -> str:
        out = f"{name}.out"
        if self.vals is not None:
            self.vals[out] = self.vals[x].reshape(len(self.vals[x]), -1)
        self.nodes.append(helper.make_node("Flatten", [x], [out], name=name, axis=1))
        return out

    def gemm(self, name: str, x: str, fin: int, fout: int, out: str | None = None) -> str:
        # torchvision Linear layout: weight [out, in], y = x W^T + b.
        w = self._he_normal((fout, fin), fin)
        b = self._bias(fout)
        out = out or f"{name}.out"
        if self.vals is not None:  # the Gemms are left unscaled: their inputs are O(1)
            self.vals[out] = self.vals[x] @ w.T + b
        wn = self._init(f"{name}.weight", w)
        bn = self._init(f"{name}.bias", b)
        self.nodes.append(
            helper.make_node(
                "Gemm", [x, wn, bn], [out], name=name, alpha=1.0, beta=1.0, transA=0, transB=1
            )
        )
        return out

    # -- model -----------------------------------------------------------------
    def model(self, graph_name: str, doc: str, size: int = IMAGE_SIZE) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])
        out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", NUM_CLASSES])
        graph = helper.make_graph(self.nodes, graph_name, [inp], [out], initializer=self.inits)
        graph.doc_string = doc
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="bbp_ref.benchmarks",
            producer_version="0.1",
        )
        # Keep the IR version at what opset 17 was released with, so that older
        # onnxruntime builds accept the file too.
        model.ir_version = 8
        return model


def resnet50(seed: int = 0, calibrate: bool = True) -> onnx.ModelProto:
    """ResNet-50 (torchvision layout, v1.5: stride on the 3x3 conv) with random weights.

    BatchNormalization running statistics drawn at random (mean ~ N(0, 0.1), var in
    [0.5, 1.5]) do not normalise anything, so with plain He-normal convs the residual
    stream grows ~1.8x per block and the logits reach ~1e4-1e5.  ``calibrate=True``
    (the default) rescales each conv's He-normal weight by one scalar so that its
    output has unit RMS on two random N(0, 1) images; activations then stay O(1)
    through the depth.  ``calibrate=False`` gives the plain He-normal model.
    """
    g = _GraphBuilder(seed, calibrate=calibrate)
    x = g.conv("conv1", INPUT_NAME, 3, 64, 7, stride=2, pad=3)
    x = g.bn("bn1", x, 64)
    x = g.relu("relu", x)
    x = g.maxpool("maxpool", x, 3, 2, pad=1)

    inplanes = 64
    expansion = 4
    for stage, (planes, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
    ):
        for i in range(blocks):
            s = stride if i == 0 else 1
            p = f"layer{stage}.{i}"
            identity = x
            y = g.conv(f"{p}.conv1", x, inplanes, planes, 1)
            y = g.bn(f"{p}.bn1", y, planes)
            y = g.relu(f"{p}.relu1", y)
            y = g.conv(f"{p}.conv2", y, planes, planes, 3, stride=s, pad=1)
            y = g.bn(f"{p}.bn2", y, planes)
            y = g.relu(f"{p}.relu2", y)
            y = g.conv(f"{p}.conv3", y, planes, planes * expansion, 1)
            y = g.bn(f"{p}.bn3", y, planes * expansion)
            if i == 0:  # s != 1 or inplanes != planes * expansion: true for every stage
                identity = g.conv(f"{p}.downsample.0", x, inplanes, planes * expansion, 1, s)
                identity = g.bn(f"{p}.downsample.1", identity, planes * expansion)
            y = g.add(f"{p}.add", y, identity)
            x = g.relu(f"{p}.relu3", y)
            inplanes = planes * expansion

    x = g.global_avgpool("avgpool", x)
    x = g.flatten("flatten", x)
    g.gemm("fc", x, 512 * expansion, NUM_CLASSES, out=OUTPUT_NAME)
    return g.model("resnet50", f"ResNet-50, random weights, seed={seed}")


# fmt: off
VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]
# fmt: on


def vgg16(seed: int = 0) -> onnx.ModelProto:
    """VGG-16 (torchvision configuration "D", no batch norm) with random weights."""
    g = _GraphBuilder(seed)
    x = INPUT_NAME
    cin = 3
    idx = 0  # torchvision's index into `features`
    for v in VGG16_CFG:
        if v == "M":
            x = g.maxpool(f"features.{idx}", x, 2, 2)
            idx += 1
        else:
            assert isinstance(v, int)
            x = g.conv(f"features.{idx}", x, cin, v, 3, pad=1, bias=True)
            x = g.relu(f"features.{idx + 1}", x)
            cin = v
            idx += 2
    x = g.flatten("flatten", x)
    x = g.gemm("classifier.0", x, 512 * 7 * 7, 4096)
    x = g.relu("classifier.1", x)
    x = g.gemm("classifier.3", x, 4096, 4096)
    x = g.relu("classifier.4", x)
    g.gemm("classifier.6", x, 4096, NUM_CLASSES, out=OUTPUT_NAME)
    return g.model("vgg16", f"VGG-16, random weights, seed={seed}")


def small_cnn(seed: int = 0, size: int = IMAGE_SIZE) -> onnx.ModelProto:
    """A small CNN on ``size`` x ``size`` images for exact integrated gradients
    (``bench_exact_ig.py``): three 3x3 convs with bias (3->16 stride 2, 16->32, 32->64),
    each followed by Relu and a 2x2/2 MaxPool, then GlobalAveragePool, Flatten,
    Gemm 64 -> 1000."""
    g = _GraphBuilder(seed)
    x = g.conv("conv1", INPUT_NAME, 3, 16, 3, stride=2, pad=1, bias=True)
    x = g.maxpool("pool1", g.relu("relu1", x), 2, 2)
    x = g.conv("conv2", x, 16, 32, 3, pad=1, bias=True)
    x = g.maxpool("pool2", g.relu("relu2", x), 2, 2)
    x = g.conv("conv3", x, 32, 64, 3, pad=1, bias=True)
    x = g.maxpool("pool3", g.relu("relu3", x), 2, 2)
    x = g.flatten("flatten", g.global_avgpool("avgpool", x))
    g.gemm("fc", x, 64, NUM_CLASSES, out=OUTPUT_NAME)
    return g.model("small_cnn", f"small {size}x{size} CNN, random weights, seed={seed}", size)


BUILT_HERE = {"resnet50": resnet50, "vgg16": vgg16, "small_cnn": small_cnn}
# torchvision architectures exported by PyTorch (tangent_models.py; needs torch)
MODELS = {**BUILT_HERE, **tangent_models.MODELS}


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` as a single file (both models are well under 2 GB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, path)  # never leave a half-written model behind in the cache
    return path


def ensure_model(name: str, out_dir: str | os.PathLike[str] = DEFAULT_CACHE, seed: int = 0) -> Path:
    """Return the path of ``<out_dir>/<name>.onnx``, building it if it is missing."""
    path = Path(out_dir) / f"{name}.onnx"
    if not path.exists():
        save(MODELS[name](seed), path)
    return path


def ort_check(path: str | os.PathLike[str], seed: int = 0, repeat: int = 5) -> dict[str, float]:
    """Run ``path`` with onnxruntime on a random 1x3x224x224 input; return timings (s)."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE))
    x = x.astype(np.float32)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    t_session = time.perf_counter() - t0
    t0 = time.perf_counter()
    (y,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        times.append(time.perf_counter() - t0)
    if y.shape != (1, NUM_CLASSES):
        raise AssertionError(f"{path}: logits shape {y.shape}, expected (1, {NUM_CLASSES})")
    if not np.all(np.isfinite(y)):
        raise AssertionError(f"{path}: non-finite logits")
    if not np.any(y != 0):
        raise AssertionError(f"{path}: all logits are zero")
    return {
        "session": t_session,
        "first_run": t_first,
        "run_median": float(np.median(times)),
        "logit_std": float(y.std()),
        "logit_absmax": float(np.abs(y).max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_CACHE), help="output folder [%(default)s]")
    ap.add_argument("--seed", type=int, default=0, help="weight seed [%(default)s]")
    ap.add_argument("--models", default=",".join(BUILT_HERE),
                    help=f"comma-separated, of {', '.join(MODELS)} [%(default)s]")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    args = ap.parse_args(argv)

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        if name not in MODELS:
            ap.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for name in names:
        t0 = time.perf_counter()
        model = MODELS[name](args.seed)
        t_build = time.perf_counter() - t0
        onnx.checker.check_model(model)
        n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        path = Path(args.out) / f"{name}.onnx"
        t0 = time.perf_counter()
        save(model, path)
        t_save = time.perf_counter() - t0
        del model
        size_mb = path.stat().st_size / 2**20
        print(
            f"{name}: {n_params / 1e6:.2f} M parameters, {size_mb:.1f} MiB -> {path}"
            f"  (build {t_build:.1f} s, save {t_save:.1f} s)"
        )
        if not args.no_check:
            r = ort_check(path, seed=args.seed)
            print(
                f"  onnxruntime: session {r['session']:.2f} s, first run {r['first_run']:.3f} s, "
                f"median run {r['run_median']:.3f} s; logits std {r['logit_std']:.3g}, "
                f"max |logit| {r['logit_absmax']:.3g}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
