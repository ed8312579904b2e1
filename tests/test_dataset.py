"""`explain_dataset`: the Zarr store holds what `explain` gives batch by batch, on one
process or on a Dask LocalCluster, after a lost worker or an interrupted run; failed
examples are recorded with their reason and do not stop the others.

Skipped without the 'dataset' extra (dask, distributed, zarr); CI installs it and sets
BBP_REQUIRE_DATASET=1, which turns the skip into an error."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from builders import f32, model, node

import bbp_ref
from bbp_ref.cli import main
from bbp_ref.defaults import default_model_path

pytestmark = pytest.mark.dataset
if os.environ.get("BBP_REQUIRE_DATASET"):
    import distributed
    import zarr
else:
    distributed = pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr")

FIELDS = ("output", "target", "bias", "gradient", "bias_attribution", "decomposition",
          "completeness", "layer_bias", "passed", "failed")
MODEL = str(default_model_path())


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 16, size=(30, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def serial(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("serial") / "store.zarr"
    run = bbp_ref.explain_dataset(MODEL, digits, out=path, batch_size=4, workers=0)
    return run, zarr.open_group(str(path), mode="r")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as local, \
            distributed.Client(local) as client:
        yield client


def read(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in FIELDS}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_the_store_holds_what_explain_gives(digits, serial):
    run, store = serial
    assert run.examples == 30 and run.chunks == 8 and run.computed == tuple(range(8))
    assert run.failures == {} and store["done"][:].all()
    e = bbp_ref.explain(MODEL, digits, rule="abs")
    np.testing.assert_array_equal(store["target"][:], e.target)
    for name in ("output", "bias", "gradient", "bias_attribution"):
        np.testing.assert_allclose(store[name][:], getattr(e, name), rtol=1e-12, atol=1e-14,
                                   err_msg=name)
    layers = store.attrs["bbp_ref"]["layers"]
    assert layers == sorted(e.layer_bias, key=layers.index) and len(layers) == len(e.layer_bias)
    for k, layer in enumerate(layers):
        np.testing.assert_allclose(store["layer_bias"][:, k], e.layer_bias[layer], rtol=1e-12,
                                   atol=1e-14)
    assert store["passed"][:].all() and not store["failed"][:].any()
    assert store["gradient"].chunks == (4, 1, 8, 8)
    # the attribution is complete: sum B(x) = b^x for every example
    np.testing.assert_allclose(store["bias_attribution"][:].reshape(30, -1).sum(axis=1),
                               store["bias"][:], rtol=1e-10, atol=1e-12)


def test_two_workers_give_the_serial_result(digits, serial, cluster, tmp_path):
    run = bbp_ref.explain_dataset(MODEL, digits, out=tmp_path / "s.zarr", batch_size=4,
                                  client=cluster)
    assert run.computed == tuple(range(8))
    assert_same(read(tmp_path / "s.zarr"), read(serial[0].path))


def slow_cnn():
    """x[N, 3, 64, 64] -> Conv 3->32 -> Relu -> Conv 32->32 -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm (10): some 0.1 s a batch, so that a worker dies with work in hand."""
    rng = np.random.default_rng(0)
    return model(
        [node("Conv", ["x", "W1", "b1"], "c1", name="conv1", pads=[1, 1, 1, 1]),
         node("Relu", ["c1"], "r1", name="relu1"),
         node("Conv", ["r1", "W2", "b2"], "c2", name="conv2", pads=[1, 1, 1, 1]),
         node("Relu", ["c2"], "r2", name="relu2"),
         node("GlobalAveragePool", ["r2"], "p", name="pool"),
         node("Flatten", ["p"], "f", name="flatten"),
         node("Gemm", ["f", "W3", "b3"], "y", name="fc", transB=1)],
        ["N", 3, 64, 64],
        {"W1": f32(rng, 32, 3, 3, 3, scale=0.3), "b1": f32(rng, 32, scale=0.1),
         "W2": f32(rng, 32, 32, 3, 3, scale=0.1), "b2": f32(rng, 32, scale=0.1),
         "W3": f32(rng, 10, 32, scale=0.3), "b3": f32(rng, 10, scale=0.1)})


def test_a_killed_worker_does_not_change_the_result(tmp_path):
    slow = slow_cnn()
    data = np.random.default_rng(1).normal(size=(24, 3, 64, 64)).astype(np.float32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50) as local, \
            distributed.Client(local) as client:
        before = set(client.scheduler_info()["workers"])
        victim = sorted(before)[0]
        killed = []

        def kill_one_worker(chunk: int) -> None:
            if killed:
                return
            busy = client.processing()[victim]  # batches the victim holds, lost with it
            killed.append(busy)
            try:
                client.run(os._exit, 1, workers=[victim])
            except Exception:  # noqa: BLE001 - the connection dies with the worker
                pass
            deadline = time.monotonic() + 30
            while victim in client.scheduler_info()["workers"]:
                assert time.monotonic() < deadline, "the worker did not die"
                time.sleep(0.05)

        run = bbp_ref.explain_dataset(slow, data, out=tmp_path / "k.zarr", batch_size=4,
                                      client=client, on_chunk=kill_one_worker)
        assert killed[0], "the victim held no batch when it was killed"
        assert victim not in client.scheduler_info()["workers"]
    assert run.computed == tuple(range(6))
    serial_batches = bbp_ref.explain_dataset(slow, data, out=tmp_path / "s.zarr",
                                             batch_size=4, workers=0)
    assert_same(read(run.path), read(serial_batches.path))


def test_an_interrupted_run_resumes_with_the_missing_chunks(digits, serial, tmp_path):
    path = tmp_path / "i.zarr"

    def interrupt(chunk: int) -> None:
        if chunk == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bbp_ref.explain_dataset(MODEL, digits, out=path, batch_size=4, workers=0,
                                on_chunk=interrupt)
    assert zarr.open_group(str(path), mode="r")["done"][:].tolist() == [True] * 3 + [False] * 5
    computed = []
    run = bbp_ref.explain_dataset(MODEL, digits, out=path, batch_size=4, workers=0,
                                  on_chunk=computed.append)
    assert run.computed == tuple(computed) == (3, 4, 5, 6, 7)
    assert_same(read(path), read(serial[0].path))
    again = bbp_ref.explain_dataset(MODEL, digits, out=path, batch_size=4, workers=0)
    assert again.computed == ()


def test_other_settings_are_refused_not_overwritten(digits, serial):
    with pytest.raises(bbp_ref.InputError, match=r"other settings \(\['rule'\]\)"):
        bbp_ref.explain_dataset(MODEL, digits, out=serial[0].path, batch_size=4, workers=0,
                                rule="signed")
    with pytest.raises(bbp_ref.InputError, match=r"other settings \(\['batch_size'"):
        bbp_ref.explain_dataset(MODEL, digits, out=serial[0].path, batch_size=5, workers=0)


def test_bad_examples_are_recorded_and_the_others_explained(digits, cluster, tmp_path):
    data = digits.copy()
    data[5, 0, 2, 2] = np.nan
    targets = np.zeros(30, dtype=np.int64)
    targets[9] = 10  # out of range for 10 classes: explain refuses it
    np.save(tmp_path / "data.npy", data)  # read back memory-mapped
    run = bbp_ref.explain_dataset(MODEL, tmp_path / "data.npy", target=targets,
                                  out=tmp_path / "f.zarr", batch_size=4, client=cluster)
    assert set(run.failures) == {5, 9}
    assert "NaN" in run.failures[5] and "out of range" in run.failures[9]
    store = read(run.path)
    assert np.flatnonzero(store["failed"]).tolist() == [5, 9]
    assert np.isnan(store["bias_attribution"][[5, 9]]).all()
    good = np.setdiff1d(np.arange(30), [5, 9])
    e = bbp_ref.explain(MODEL, data[good], target=0)
    np.testing.assert_allclose(store["bias_attribution"][good], e.bias_attribution,
                               rtol=1e-12, atol=1e-14)
    assert store["passed"][good].all()


def test_cli_explain_dataset(digits, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):  # a folder of .npy files: two batches and one single example
        np.save(folder / f"part{i}.npy", digits[i * 4:(i + 1) * 4] if i < 2 else digits[8])
    out = tmp_path / "c.zarr"
    assert main(["explain-dataset", MODEL, str(folder), "--out", str(out), "--workers", "0",
                 "--batch-size", "3", "--rule", "uniform"]) == 0
    assert "9 examples, 3 of 3 chunks computed now" in capsys.readouterr().out
    e = bbp_ref.explain(MODEL, digits[:9], rule="uniform")
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["bias_attribution"][:],
                               e.bias_attribution, rtol=1e-12, atol=1e-14)
    assert main(["explain-dataset", MODEL, str(tmp_path / "missing.npy"), "--out",
                 str(tmp_path / "m.zarr"), "--workers", "0"]) == 2
    assert "data not found" in capsys.readouterr().err
