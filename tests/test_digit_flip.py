"""Claim 3, the digit-flip test (bbp_ref.experiments.digit_flip): the erasing order and
count against a hand computation, the images chosen and the log-odds change against
onnxruntime on images erased by a plain loop, the confidence intervals against a t table,
the tables, the command (on a few images), its box plot and its progress bar."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import bbp_ref
from bbp_ref.cli import main as cli_main
from bbp_ref.errors import InputError
from bbp_ref.experiments import digit_flip as df

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
from bbp_ref.experiments.digits import digits_split  # noqa: E402

DIGITS = Path(__file__).resolve().parent.parent / "bbp_ref" / "data" / "digits"
PNG = b"\x89PNG\r\n\x1a\n"
#: Student-t quantiles t_{0.975, dof} from a printed table.
T_TABLE = {2: 4.302653, 4: 2.776445}
WITHOUT_IG = tuple(k for k in df.METHODS if k != "integrated_gradients")


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def mlp_results(split):
    return df.digit_flip(DIGITS / "mlp_bias.onnx", split.X_test, split.y_test, limit=3,
                         name="mlp_bias")


@pytest.fixture(scope="module")
def cnn_results(split):
    # exact IG on the CNN walks ~600 pieces per path: left out here to stay fast (the
    # command test below runs it); the erasing does not depend on the method
    return df.digit_flip(DIGITS / "cnn_bias.onnx", split.X_test, split.y_test, limit=2,
                         methods=WITHOUT_IG, name="cnn_bias")


def test_pixel_budget_rounds_like_the_deeplift_paper():
    assert df.pixel_budget(28 * 28) == 157  # "up to 157 pixels (20% of the image)"
    assert df.pixel_budget(64) == 13
    assert df.pixel_budget(10) == 2 and df.pixel_budget(64, 0.5) == 32


def test_erase_mask_by_hand():
    diff = np.array([[0.5, -1.0, 2.0, 0.0, 0.5, 3.0],    # 3.0, 2.0, then the tie 0.5: index 0
                     [0.0, 0.0, -2.0, 1.0, 0.0, 0.0],    # one positive value only
                     [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],     # all tied: the first three
                     [-1.0, -2.0, 0.0, -0.5, -3.0, 0.0]])  # nothing positive: nothing
    expected = np.array([[1, 0, 1, 0, 0, 1],
                         [0, 0, 0, 1, 0, 0],
                         [1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(df.erase_mask(diff, 3), expected)
    np.testing.assert_array_equal(df.erase_mask(diff, 0), np.zeros_like(expected))
    np.testing.assert_array_equal(df.erase_mask(diff, 6), diff > 0)


def _attributions(model, x, classes, with_ig):
    """S_c for each class (flattened [n, 64]), per method, computed apart from the module:
    W^x from the full Jacobian, the baselines and BBp called once per class."""
    n = len(x)
    jac = model.jacobian(x).reshape(n, 10, -1)
    flat = x.reshape(n, -1)
    out = {}
    for c in classes:
        t = np.full(n, c)
        s = {"gradient_x_input": jac[:, c] * flat,
             "deeplift": bbp_ref.deeplift(model, x, target=t).attribution.reshape(n, -1)}
        if with_ig:
            s["integrated_gradients"] = bbp_ref.integrated_gradients(
                model, x, target=t).attribution.reshape(n, -1)
        for rule in df.RULES:
            bias = bbp_ref.explain(model, x, target=t, rule=rule).bias_attribution
            s[f"bbp_{rule}"] = bias.reshape(n, -1)
            s[f"gradient_x_input+bbp_{rule}"] = s["gradient_x_input"] + s[f"bbp_{rule}"]
        out[c] = s
    return out


@pytest.mark.parametrize(("results", "name", "limit"),
                         [("mlp_results", "mlp_bias", 3), ("cnn_results", "cnn_bias", 2)])
def test_against_onnxruntime_on_images_erased_by_a_loop(request, split, results, name, limit):
    results = request.getfixturevalue(results)
    session = ort.InferenceSession(str(DIGITS / f"{name}.onnx"),
                                   providers=["CPUExecutionProvider"])

    def logits(images):
        return session.run(None, {session.get_inputs()[0].name:
                                  np.asarray(images, np.float32)})[0].astype(np.float64)

    X, y = split.X_test, split.y_test
    predicted = logits(X).argmax(axis=1)
    model = bbp_ref.load(DIGITS / f"{name}.onnx")
    methods = list(dict.fromkeys(r.method for r in results))
    assert [(r.source, r.target) for r in results[::len(methods)]] == list(df.PAIRS)
    cache = {}
    for r in results:
        o, t = r.source, r.target
        rows = [i for i in range(len(y)) if y[i] == o and predicted[i] == o][:limit]
        np.testing.assert_array_equal(r.indices, rows)
        if o not in cache:
            classes = {o, *(t2 for o2, t2 in df.PAIRS if o2 == o)}
            cache[o] = _attributions(model, X[rows].astype(np.float64), classes,
                                     "integrated_gradients" in methods)
        keys = 1.0 - np.random.default_rng((df.RANDOM_SEED, o)).random((len(rows), 64))
        for j, i in enumerate(rows):
            image = X[i].reshape(-1).astype(np.float64)
            if r.method == "random":
                diff = keys[j]
            else:
                diff = cache[o][o][r.method][j] - cache[o][t][r.method][j]
            ranked = sorted(range(64), key=lambda q: (-diff[q], q))
            chosen = [q for q in ranked[:13] if diff[q] > 0]
            erased = image.copy()
            erased[chosen] = 0.0
            before, after = logits(np.stack([image, erased]).reshape(2, 1, 8, 8))
            assert r.erased[j] == len(chosen)
            assert r.changed[j] == sum(image[q] != 0 for q in chosen)
            assert r.before[j] == pytest.approx(before[o] - before[t], rel=1e-5, abs=1e-4)
            assert r.after[j] == pytest.approx(after[o] - after[t], rel=1e-5, abs=1e-4)
            assert r.change[j] == pytest.approx((before[o] - before[t])
                                                - (after[o] - after[t]), rel=1e-5, abs=1e-4)


def test_random_order_erases_the_whole_budget_and_methods_differ(mlp_results):
    by = {(r.source, r.target, r.method): r for r in mlp_results}
    for s, t in df.PAIRS:
        assert np.all(by[s, t, "random"].erased == 13)
        assert np.all(by[s, t, "gradient_x_input"].erased <= 13)
        # gradient x input only ever erases ink: a black pixel has W^x x = 0
        np.testing.assert_array_equal(by[s, t, "gradient_x_input"].erased,
                                      by[s, t, "gradient_x_input"].changed)
    # the random order is drawn per source digit: the same for 8->3 and 8->6
    np.testing.assert_array_equal(by[8, 3, "random"].changed, by[8, 6, "random"].changed)
    assert not np.array_equal(by[8, 3, "random"].change, by[8, 3, "gradient_x_input"].change)


def test_uniform_rule_on_the_mlp_orders_by_the_tie_rule_alone(split, mlp_results):
    """docs/reproduction.md: the MLP's first layer is dense, so `uniform` gives every pixel
    the same share of b^x; S_diff is constant and the first 13 pixels (raster order) or
    none are erased."""
    model = bbp_ref.load(DIGITS / "mlp_bias.onnx")
    for r in (r for r in mlp_results if r.method == "bbp_uniform"):
        x = split.X_test[r.indices].astype(np.float64)
        shares = [bbp_ref.explain(model, x, target=np.full(r.n, c), rule="uniform",
                                  check=False).bias_attribution.reshape(r.n, -1)
                  for c in (r.source, r.target)]
        diff = shares[0] - shares[1]
        np.testing.assert_allclose(diff, diff[:, :1].repeat(64, axis=1), rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_array_equal(r.erased, np.where(diff[:, 0] > 0, 13, 0))
        top = (x.reshape(r.n, -1)[:, :13] != 0).sum(axis=1)
        np.testing.assert_array_equal(r.changed, np.where(diff[:, 0] > 0, top, 0))


def test_mean_interval_against_a_t_table():
    mean, low, high = df.mean_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    half = T_TABLE[4] * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3.0
    assert low == pytest.approx(3.0 - half, rel=1e-6) and high == pytest.approx(3.0 + half,
                                                                               rel=1e-6)
    assert df.mean_interval(np.array([2.0]))[0] == 2.0
    assert all(math.isnan(v) for v in df.mean_interval(np.array([2.0]))[1:])
    assert all(math.isnan(v) for v in df.mean_interval(np.array([])))


def test_every_interval_contains_its_mean(mlp_results, cnn_results):
    for r in [*mlp_results, *cnn_results]:
        mean, low, high = r.interval()
        assert mean == pytest.approx(r.change.mean())
        assert low <= mean <= high


def _result(source, target, method, before, after, erased=None):
    n = len(before)
    return df.FlipResult("m", source, target, method, np.arange(n), np.array(before, float),
                         np.array(after, float), np.full(n, 13) if erased is None else
                         np.array(erased), np.full(n, 13) if erased is None else
                         np.array(erased))


def test_tables_by_hand():
    results = [_result(8, 3, "random", [5.0, 5.0, 5.0], [4.0, 3.0, 2.0]),
               _result(8, 3, "gradient_x_input", [5.0, 5.0, 5.0], [0.0, 1.0, 2.0], [13, 12, 11]),
               _result(4, 9, "random", [1.0], [0.5]),
               _result(4, 9, "gradient_x_input", [1.0], [-1.0])]
    half = T_TABLE[2] * 1.0 / math.sqrt(3)  # changes 1, 2, 3: sd 1
    table = df.format_table(results).splitlines()
    assert table[0] == "| method | 8→3 (n=3) | 4→9 (n=1) |"
    assert table[2] == "| *log-odds before erasing* | 5.00 [5.00, 5.00] | 1.00 |"
    assert table[3] == f"| random order | 2.00 [{2 - half:.2f}, {2 + half:.2f}] | 0.50 |"
    assert table[4] == f"| grad. × input | 4.00 [{4 - half:.2f}, {4 + half:.2f}] | 2.00 |"
    paired = df.format_paired(results).splitlines()
    # paired differences -4, -2, 0: sd 2
    assert paired[2:] == [f"| random order | -2.00 [{-2 - 2 * half:.2f}, {-2 + 2 * half:.2f}] "
                          "| -1.50 |"]
    erased = df.format_erased(results).splitlines()
    assert erased[3] == "| grad. × input | 12.0 (12.0) | 13.0 (13.0) |"
    with pytest.raises(InputError, match="reference"):
        df.format_paired(results[:1])


def test_a_source_digit_without_images(split):
    X, y = split.X_test[:5], split.y_test[:5]
    assert 0 not in y
    results = df.digit_flip(DIGITS / "mlp_bias.onnx", X, y, pairs=[(0, 1), (y[0], 1)],
                            methods=["random", "bbp_abs"])
    assert [r.n for r in results[:2]] == [0, 0]
    assert "| random order | — |" in df.format_table(results)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"methods": ["saliency"]}, "unknown methods"),
    ({"methods": []}, "unknown methods"),
    ({"limit": 0}, "limit"),
    ({"pairs": [(3, 3)]}, "two different digits"),
    ({"pairs": [(8, 3), (8, 3)]}, "repeat"),
    ({"pairs": [(8, 10)]}, "two different digits"),
])
def test_digit_flip_rejects_bad_arguments(split, kwargs, match):
    with pytest.raises(InputError, match=match):
        df.digit_flip(DIGITS / "mlp_bias.onnx", split.X_test[:5], split.y_test[:5], **kwargs)


def test_digit_flip_rejects_bad_labels(split):
    with pytest.raises(InputError, match="integer labels"):
        df.digit_flip(DIGITS / "mlp_bias.onnx", split.X_test[:5], split.y_test[:4])


def test_the_command_on_one_image_per_digit_with_the_progress_bar(capsys):
    assert df.main(["--models", str(DIGITS), "--model-names", "cnn_bias", "--limit", "1",
                    "--no-figures", "--progress"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    head = lines.index("| method | 8→3 (n=1) | 8→6 (n=1) | 4→9 (n=1) | 9→4 (n=1) |")
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[head + 3:head + 13]]
    assert rows == list(df.METHODS.values())
    assert "minus grad. × input" in out and "pixels erased per image" in out
    # one tick per (image, explained class): 8 -> {8, 3, 6}, 4 -> {4, 9}, 9 -> {9, 4};
    # drawn by tqdm when it is installed, else as a plain line
    assert "digit flip cnn_bias" in err and "7/7" in err
    if importlib.util.find_spec("tqdm") is None:
        assert "\rdigit flip cnn_bias [" in err and "[" + "#" * 30 + "]" in err
    else:
        assert "100%" in err


def test_the_plain_progress_bar():
    stream = io.StringIO()
    bar = df.Progress("x", stream=stream, enabled=True, plain=True)
    bar.add(4)
    bar.update(3)
    bar.update(1)
    bar.close()
    assert "\rx [" + "#" * 22 + "." * 8 + "] 3/4 " in stream.getvalue()
    assert "\rx [" + "#" * 30 + "] 4/4 " in stream.getvalue()


def test_quiet_turns_the_bar_off(capsys, monkeypatch):
    monkeypatch.setattr("bbp_ref.progress.isatty", lambda stream: True)  # as on a terminal
    argv = ["--model-names", "mlp_bias", "--limit", "1", "--no-figures", "--pairs", "8:3"]
    assert df.main(argv) == 0
    assert "digit flip mlp_bias" in capsys.readouterr().err
    assert df.main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_from_any_folder_the_figures_go_into_a_new_folder_there(capsys, tmp_path,
                                                                monkeypatch):
    """No --models: the package's digits models; no --out: a new folder in the current
    directory (never the source tree), a fresh one on each run."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    argv = ["digit-flip", "--model-names", "mlp_bias", "--limit", "1", "--pairs", "8:3",
            "--dpi", "40"]
    assert cli_main(argv) == 0 and cli_main(argv) == 0
    out = capsys.readouterr().out
    first = Path("bbp-ref-digit-flip") / "digit_flip_mlp_bias.png"
    second = Path("bbp-ref-digit-flip-2") / "digit_flip_mlp_bias.png"
    assert f"wrote {first}" in out and f"wrote {second}" in out
    assert (tmp_path / first).read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bbp-ref-digit-flip",
                                                          "bbp-ref-digit-flip-2"]


def test_no_progress_bar_unless_asked_or_a_terminal(capsys):
    assert df.main(["--models", str(DIGITS), "--model-names", "mlp_bias", "--limit", "1",
                    "--no-figures"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "mlp_bias" in out
    bar = df.Progress("x", stream=_Terminal(), enabled=None)
    assert bar.enabled


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_digit_flip_writes_the_box_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code = cli_main(["digit-flip", "--models", str(DIGITS), "--model-names", "mlp_bias",
                     "--limit", "3", "--images", str(tmp_path / "images"), "--pairs", "8:3",
                     "4:9"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    figure = tmp_path / "images" / "digit_flip_mlp_bias.png"
    assert f"wrote {figure}" in out
    assert figure.read_bytes().startswith(PNG)
    assert "| method | 8→3 (n=3) | 4→9 (n=3) |" in out


def test_box_plot_panels(mlp_results):
    pytest.importorskip("matplotlib")
    fig = df.box_plot(mlp_results, "title")
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [f"{s} → {t} (n=3)" for s, t in df.PAIRS]
    labels = [tick.get_text() for tick in axes[0].get_yticklabels()]
    assert labels == list(df.METHODS.values())


@pytest.mark.parametrize(("argv", "match"), [
    (["--pairs", "8:8"], "two different digits"),
    (["--pairs", "8-3"], "SOURCE:TARGET"),
    (["--limit", "0"], "--limit must be positive"),
    (["--model-names", "nope"], "model file not found"),
    (["--data", "train"], "invalid choice"),
])
def test_cli_digit_flip_errors_are_one_line(capsys, argv, match):
    code = cli_main(["digit-flip", "--models", str(DIGITS), "--no-figures", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("bbp-ref: error:")
    assert match in err and "Traceback" not in err
