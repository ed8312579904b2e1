"""bbp_ref.plot: the attribution grid and the per-layer figure (skipped without
matplotlib)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import bbp_ref
from bbp_ref.defaults import default_input
from bbp_ref.errors import InputError
from bbp_ref.experiments.optional import MissingDependencyError

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from bbp_ref import plot  # noqa: E402

MLP = Path(__file__).resolve().parent.parent / "models" / "digits" / "mlp_bias.onnx"
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


def test_draw_grid_of_flat_and_rgb_inputs():
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(3, 16))
    fig = plot.draw_grid([plot.Column("input", flat, plot.INPUT),
                          plot.Column("a", flat, plot.ATTRIBUTION, flat.sum(axis=1))],
                         ["r0", "r1", "r2"], title="t", note="n")
    panels = _panels(fig)
    assert panels.shape == (3, 2) and panels[0, 1].images[0].get_array().shape == (4, 4)
    assert panels[0, 1].images[0].get_clim() == (-np.abs(flat).max(), np.abs(flat).max())
    rgb = rng.uniform(size=(2, 3, 5, 6))
    assert plot.to_images(rgb, rgb=True).shape == (2, 5, 6, 3)
    assert plot.to_images(rgb, rgb=False).shape == (2, 5, 6)
    assert plot.to_images(rng.normal(size=(2, 7)), rgb=False).shape == (2, 1, 7)
    with pytest.raises(InputError, match="cannot draw"):
        plot.to_images(np.zeros((1, 2, 3, 4, 5)), rgb=False)
    with pytest.raises(InputError, match="2 maps for 3 rows"):
        plot.draw_grid([plot.Column("a", flat[:2], plot.NORMALISED)], ["a", "b", "c"])


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
