"""bbp_ref.plot: the attribution grid and the per-layer figure (skipped without
matplotlib)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import bbp_ref
from bbp_ref.defaults import default_input, default_model_path
from bbp_ref.errors import InputError
from bbp_ref.experiments.optional import MissingDependencyError

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from bbp_ref import plot  # noqa: E402

MLP = Path(__file__).resolve().parent.parent / "bbp_ref" / "data" / "digits" / "mlp_bias.onnx"
PNG = b"\x89PNG\r\n\x1a\n"
GRID_TITLES = ["input", "norm.\ngrad.", "grad.\n× input", "norm.\nIG", "IG\nattrib.",
               "norm. bias.1\n(abs)", "bias.1 attrib.\n(abs)",
               "norm. bias.2\n(signed)", "bias.2 attrib.\n(signed)",
               "norm. bias.3\n(uniform)", "bias.3 attrib.\n(uniform)"]


@pytest.fixture(scope="module")
def model():
    return bbp_ref.load(MLP)  # small: exact integrated gradients take milliseconds


@pytest.fixture(scope="module")
def x():
    sample = default_input()  # [1, 8, 8], a "2"
    return np.stack([sample, sample[:, :, ::-1]])


def _panels(fig):
    """The image panels as a rows x columns array of axes (colour bars excluded)."""
    found = {tuple(map(int, ax.get_label().split()[1:])): ax for ax in fig.axes
             if ax.get_label().startswith("panel ")}
    n, k = (max(index) + 1 for index in zip(*found))
    assert len(found) == n * k
    panels = np.empty((n, k), dtype=object)
    for (i, j), ax in found.items():
        panels[i, j] = ax
        assert len(ax.images) == 1
    # rows go down, columns go right
    assert all(panels[i, 0].get_position().y0 > panels[i + 1, 0].get_position().y0
               for i in range(n - 1))
    assert all(panels[0, j].get_position().x0 < panels[0, j + 1].get_position().x0
               for j in range(k - 1))
    return panels


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label().startswith("colour bar ")]


def test_attribution_figure_panels_labels_and_colour_scales(model, x):
    fig = plot.attribution_figure(model, x, labels=[2, 5])
    panels = _panels(fig)
    assert panels.shape == (2, 11)
    assert [ax.get_title() for ax in panels[0]] == GRID_TITLES
    assert all(ax.get_title() == "" for ax in panels[1])
    predicted = model.forward(x).argmax(axis=1)
    assert [ax.get_ylabel() for ax in panels[:, 0]] == [f"true {y}\npred {p}" for y, p in
                                                        zip([2, 5], predicted)]
    assert len(_colorbars(fig)) == 11
    for j, title in enumerate(GRID_TITLES):
        limits = {ax.images[0].get_clim() for ax in panels[:, j]}
        assert len(limits) == 1, title  # one scale per column, shared across rows
        low, high = limits.pop()
        if j == 0:
            assert panels[0, j].images[0].get_cmap().name == "gray"
            continue
        assert low == -high and high > 0, title  # symmetric about zero
        assert panels[0, j].images[0].get_cmap().name == "RdBu_r"
        if title.startswith("norm."):
            assert high == 1.0
        else:
            values = np.concatenate([ax.images[0].get_array().ravel() for ax in panels[:, j]])
            assert high == pytest.approx(np.abs(values).max())
            assert panels[0, j].get_xlabel().startswith("Σ = ")
    assert "cnn" not in fig.get_suptitle() and "mlp_bias.onnx" in fig.get_suptitle()


def test_grid_texts_do_not_overlap(model, x):
    fig = plot.attribution_figure(model, x, labels=[2, 5])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # places the labels
    renderer = canvas.get_renderer()
    panels = _panels(fig)
    bars = _colorbars(fig)

    def box(artist):
        return artist.get_window_extent(renderer)

    titles = [box(ax.title) for ax in panels[0]]
    assert not any(a.overlaps(b) for a, b in zip(titles, titles[1:]))
    sums = [box(ax.xaxis.label) for ax in panels[-1] if ax.get_xlabel()]
    assert all(not s.overlaps(box(bar)) for s in sums for bar in bars)
    ticks = [box(t) for bar in bars for t in bar.get_xticklabels()]
    assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
    figure_box = fig.bbox
    assert len(fig.texts) == 2  # the title and the note
    for artist in [panels[0, 0].yaxis.label, *fig.texts, *(ax.title for ax in panels[0])]:
        b = box(artist)
        assert b.x0 >= figure_box.x0 and b.x1 <= figure_box.x1, artist.get_text()
        assert b.y0 >= figure_box.y0 and b.y1 <= figure_box.y1, artist.get_text()


def test_grid_sums_are_the_decomposition(model, x):
    """grad. x input plus any bias attribution sums to the explained logit."""
    fig = plot.attribution_figure(model, x[:1])
    panels = _panels(fig)[0]
    sums = {ax.get_title(): float(ax.get_xlabel().split("=")[1]) for ax in panels
            if ax.get_xlabel()}
    e = bbp_ref.explain(model, x[0])
    assert sums["grad.\n× input"] + sums["bias.1 attrib.\n(abs)"] == pytest.approx(
        float(e.output), rel=1e-2)
    assert sums["bias.2 attrib.\n(signed)"] == pytest.approx(float(e.bias), rel=1e-2)


def test_layer_figure(model, x):
    fig = plot.layer_figure(model, x, labels=[2, 5], rule="uniform")
    panels = _panels(fig)
    layers = [n.name for n in model.nodes if n.op == "Gemm"]
    assert panels.shape == (2, 1 + len(layers) + 1)
    titles = [ax.get_title() for ax in panels[0]]
    assert titles[0] == "input" and titles[-1] == "all biases\n(= B(x))"
    assert titles[1:-1] == [f"{name}\n(Gemm)" for name in layers]
    for j in range(1, panels.shape[1]):
        (low, high), = {ax.images[0].get_clim() for ax in panels[:, j]}
        assert low == -high
    assert "BBp rule uniform (bias.3)" in fig.get_supxlabel()


def test_explain_plot_writes_pngs(model, x, tmp_path):
    written = plot.explain_plot(model, x[0], tmp_path / "grid.png",
                                layers_out_path=tmp_path / "layers.png", dpi=40)
    assert written == [tmp_path / "grid.png", tmp_path / "layers.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG
    with pytest.raises(InputError, match="cannot write"):
        plot.explain_plot(model, x[0], tmp_path / "missing" / "grid.png", dpi=40)


def test_input_kinds():
    assert plot.input_kind([1, 8, 8]) == plot.IMAGE and plot.input_kind([8, 8]) == plot.IMAGE
    assert plot.input_kind([3, 32, 32]) == plot.RGB
    assert plot.input_kind([10]) == plot.BARS and plot.input_kind([64]) == plot.BARS
    assert plot.input_kind([65]) == plot.LINES and plot.input_kind([2, 12]) == plot.LINES
    with pytest.raises(InputError, match="cannot draw"):
        plot.input_kind([2, 3, 4, 5])
    rgb = np.random.default_rng(0).uniform(size=(2, 3, 5, 6))
    assert plot.to_images(rgb, rgb=True).shape == (2, 5, 6, 3)
    assert plot.to_images(rgb, rgb=False).shape == (2, 5, 6)
    with pytest.raises(InputError, match="2 maps for 3 rows"):
        plot.draw_grid([plot.Column("a", rgb, plot.NORMALISED)], ["a", "b", "c"])


def test_normalise_and_limits():
    maps = np.array([[[-2.0, 1.0]], [[0.0, 0.0]]])
    np.testing.assert_array_equal(plot.normalise(maps), [[[-1.0, 0.5]], [[0.0, 0.0]]])
    assert plot.symmetric_limit(maps) == 2.0 and plot.symmetric_limit(np.zeros(3)) == 1.0
    assert plot.row_labels(np.array([1, 2]), np.array([1, 0]), None, None, 2) == [
        "pred 1", "pred 2\nexpl. 0"]
    assert plot.row_labels(np.array([1]), np.array([1]), [0], ["zero", "one"], 1) == [
        "true zero\npred one"]


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        plot.draw_grid([plot.Column("a", np.zeros((1, 4)), plot.NORMALISED)], ["r"])


# -- inputs that are not grey images ---------------------------------------------------


def _tabular_model(features: int, classes: int = 3):
    from builders import f32, model, node

    rng = np.random.default_rng(5)
    return model([node("Gemm", ["x", "W1", "b1"], "h", name="dense_1", transB=1),
                  node("Relu", ["h"], "r", name="relu"),
                  node("Gemm", ["r", "W2", "b2"], "y", name="dense_2", transB=1)],
                 ["N", features], {"W1": f32(rng, 6, features), "b1": f32(rng, 6),
                                   "W2": f32(rng, classes, 6), "b2": f32(rng, classes)})


def test_tabular_input_is_a_labelled_bar_chart():
    x = np.random.default_rng(1).normal(size=(2, 10)).astype(np.float32)
    model = bbp_ref.load(_tabular_model(10))
    fig = plot.attribution_figure(model, x, methods=("bbp-abs", "gradient-x-input"))
    panels = _chart_panels(fig)
    assert panels.shape == (2, 1 + 2 + 1)
    e = bbp_ref.explain(model, x)
    bars = panels[0, 2].patches  # bias.1 attrib. of the first example: one bar per feature
    assert len(bars) == 10
    np.testing.assert_allclose([b.get_height() for b in bars], e.bias_attribution[0],
                               rtol=1e-12)
    assert [round(b.get_x() + b.get_width() / 2) for b in bars] == list(range(10))
    assert panels[-1, 0].get_xlabel().startswith("feature")
    for j in (2, 3):  # attribution columns: one y-range per column, symmetric about 0
        limits = {ax.get_ylim() for ax in panels[:, j]}
        assert len(limits) == 1
        low, high = limits.pop()
        assert low == -high
    assert not [ax for ax in fig.axes if ax.get_label().startswith("colour bar")]


def test_a_signal_is_a_line_chart_per_channel():
    signal = np.random.default_rng(2).normal(size=(1, 2, 40))
    columns = [plot.Column("input", signal, plot.INPUT),
               plot.Column("map", np.ones((1, 2, 40)), plot.ATTRIBUTION, np.array([80.0]))]
    panels = _chart_panels(plot.draw_grid(columns, ["r0"]))
    assert [len(ax.lines) for ax in panels[0]] == [3, 3]  # one per channel and the zero line
    for channel in range(2):
        np.testing.assert_array_equal(panels[0, 0].lines[channel].get_ydata(),
                                      signal[0, channel])
    assert [t.get_text() for t in panels[0, 0].get_legend().get_texts()] == [
        "channel 0", "channel 1"]
    assert panels[0, 1].get_xlabel() == "position\nΣ = +80"


def _chart_panels(fig):
    found = {tuple(map(int, ax.get_label().split()[1:])): ax for ax in fig.axes
             if ax.get_label().startswith("panel ")}
    n, k = (max(index) + 1 for index in zip(*found))
    panels = np.empty((n, k), dtype=object)
    for (i, j), ax in found.items():
        panels[i, j] = ax
        assert not ax.images  # a chart, not a stretched image
    return panels


def test_colour_images_show_the_map_over_the_image():
    """A 3-channel input: the first column is the colour image; each map is drawn over a
    grey copy of it, transparent where the map is 0 and most opaque where it is largest."""
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(1, 3, 6, 5))
    maps = np.zeros((1, 3, 6, 5))
    maps[0, :, 2, 3] = [1.0, 0.5, 0.5]  # one pixel, channels summed: 2
    maps[0, 0, 4, 1] = -1.0
    fig = plot.draw_grid([plot.Column("input", x, plot.INPUT),
                          plot.Column("m", maps, plot.ATTRIBUTION, np.array([1.0]))], ["r"])
    panels = _panels_any(fig)
    colour = panels[0, 0].images[0].get_array()
    assert colour.shape == (6, 5, 3) and colour.min() == 0.0 and colour.max() == 1.0
    grey, overlay = panels[0, 1].images
    np.testing.assert_allclose(grey.get_array(), plot._unit_range(x.mean(axis=1))[0])
    np.testing.assert_array_equal(overlay.get_array(), maps[0].sum(axis=0))
    alpha = overlay.get_alpha()
    scale = np.quantile([2.0, 1.0] + [0.0] * 28, plot.OVERLAY_QUANTILE)  # by hand
    assert alpha[2, 3] == pytest.approx(plot.OVERLAY_ALPHA) and alpha[0, 0] == 0.0
    assert alpha[4, 1] == pytest.approx(plot.OVERLAY_ALPHA * 1.0 / scale)
    limit = np.quantile(np.abs(maps[0].sum(axis=0)), plot.OVERLAY_QUANTILE)
    assert overlay.get_clim() == pytest.approx((-limit, limit))


def _panels_any(fig):
    found = {tuple(map(int, ax.get_label().split()[1:])): ax for ax in fig.axes
             if ax.get_label().startswith("panel ")}
    n, k = (max(index) + 1 for index in zip(*found))
    panels = np.empty((n, k), dtype=object)
    for (i, j), ax in found.items():
        panels[i, j] = ax
    return panels


def test_the_layer_figure_wraps_and_keeps_full_names(tmp_path):
    """A deep network: more layers than MAX_COLUMNS wrap into bands, and each column
    title holds the node's full name (broken into lines, not cut)."""
    from builders import f32, model, node

    rng = np.random.default_rng(4)
    depth = 11
    nodes, weights, current = [], {}, "x"
    for k in range(depth):
        name = f"/encoder/block_{k}/dense_projection/Gemm"
        nodes += [node("Gemm", [current, f"W{k}", f"b{k}"], f"h{k}", name=name, transB=1),
                  node("Relu", [f"h{k}"], f"r{k}", name=f"relu{k}")]
        weights.update({f"W{k}": f32(rng, 4, 4), f"b{k}": f32(rng, 4)})
        current = f"r{k}"
    nodes.append(node("Gemm", [current, "Wo", "bo"], "y", name="head", transB=1))
    weights.update({"Wo": f32(rng, 2, 4), "bo": f32(rng, 2)})
    m = bbp_ref.load(model(nodes, ["N", 4], weights))
    fig = plot.layer_figure(m, rng.normal(size=(1, 4)).astype(np.float32))
    panels = _chart_panels(fig)
    titles = [ax.get_title() for ax in panels[0]]
    assert len(titles) == 1 + depth + 1 + 1  # input, layers, head, all biases
    for k in range(depth):
        title = titles[1 + k]
        assert title.replace("\n", "") == f"/encoder/block_{k}/dense_projection/Gemm(Gemm)"
        assert max(len(line) for line in title.splitlines()) <= plot.TITLE_WIDTH
    tops = sorted({round(ax.get_position().y1, 6) for ax in panels[0]}, reverse=True)
    lefts = sorted({round(ax.get_position().x0, 6) for ax in panels[0]})
    assert len(tops) == 2 and len(lefts) == plot.MAX_COLUMNS  # 14 columns in 2 bands of 8
    path = plot.save(fig, tmp_path / "layers.png", dpi=50)
    assert path.read_bytes()[:8] == PNG


def test_wrap_name():
    assert plot.wrap_name("short") == "short"
    assert plot.wrap_name("/a/very_long_name/Conv", 10) == "/a/very_\nlong_name/\nConv"
    assert plot.wrap_name("x" * 25, 10) == "x" * 10 + "\n" + "x" * 10 + "\n" + "x" * 5


def test_methods_choose_the_columns(model, x):
    fig = plot.attribution_figure(model, x[:1], methods=("bbp-signed", "ig"), ig_steps=4)
    titles = [ax.get_title() for ax in _panels(fig)[0]]
    assert titles == ["input", "norm. bias.2\n(signed)", "bias.2 attrib.\n(signed)",
                      "norm.\nIG", "IG\nattrib."]
    ig = bbp_ref.integrated_gradients(model, x[:1], method="gausslegendre", n_steps=4)
    shown = _panels(fig)[0, 4].images[0].get_array()
    np.testing.assert_allclose(shown, ig.attribution[0].sum(axis=0), rtol=1e-12)
    assert "Gauss-Legendre, 4 points" in fig.get_supxlabel()
    assert plot.grid_methods(["bbp", "ig", "bbp-abs"], "abs") == ("bbp-abs", "ig")


def _png_size(path):
    import struct

    data = Path(path).read_bytes()
    assert data[:8] == PNG
    return struct.unpack(">II", data[16:24])


def test_cli_plot_methods_dpi_and_a_reused_explanation(tmp_path, capsys):
    from bbp_ref.cli import main

    grid, layers = tmp_path / "grid.png", tmp_path / "layers.png"
    for dpi in (40, 80):
        assert main(["explain", "--plot", str(grid), "--plot-layers", str(layers),
                     "--methods", "bbp", "gradient", "--rule", "uniform", "--quiet",
                     "--dpi", str(dpi)]) == 0
        width, height = _png_size(grid)
        fig = plot.attribution_figure(bbp_ref.load(default_model_path()), default_input(),
                                      methods=("bbp-uniform", "gradient"))
        assert abs(width - fig.get_figwidth() * dpi) < 1  # the size in inches times --dpi
        assert abs(height - fig.get_figheight() * dpi) < 1
        assert _png_size(layers)[0] > 0
    out, err = capsys.readouterr()
    assert f"plotted      {grid}, {layers}" in out and err == ""
    # the grid drawn from the CLI's own explanation is the grid drawn from scratch
    model, x = bbp_ref.load(default_model_path()), default_input()
    e = bbp_ref.explain(model, x, rule="uniform")
    reused = plot.attribution_figure(model, x, methods=("bbp-uniform",), explained=e)
    fresh = plot.attribution_figure(model, x, methods=("bbp-uniform",))
    for a, b in zip(_panels(reused)[0], _panels(fresh)[0]):
        np.testing.assert_array_equal(a.images[0].get_array(), b.images[0].get_array())


def test_progress_bar_of_the_figures(tmp_path, capsys, monkeypatch):
    """On a terminal the figure steps show a bar on stderr; --quiet turns it off."""
    from bbp_ref.cli import main

    monkeypatch.setattr("bbp_ref.progress.isatty", lambda stream: True)
    argv = ["explain", "--plot", str(tmp_path / "g.png"), "--dpi", "30", "--ig-steps", "8"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "figures" in err and "11/11" in err  # 1 explain + 2 other methods + 8 IG points
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
