"""jaxattr.viz against Zennit's image/cmap and Captum's visualization on the same arrays."""

from __future__ import annotations

import io
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from jaxattr import viz  # noqa: E402

zimage = pytest.importorskip("zennit.image")
zcmap = pytest.importorskip("zennit.cmap")
cviz = pytest.importorskip("captum.attr._utils.visualization")

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _pillow_takes_array_palettes(monkeypatch):
    """Zennit passes its palette as a numpy array, which recent Pillow cannot load."""
    put = Image.Image.putpalette

    def putpalette(self, data, rawmode="RGB"):
        if isinstance(data, np.ndarray):
            data = np.asarray(data, np.uint8).tobytes()
        return put(self, data, rawmode)

    monkeypatch.setattr(Image.Image, "putpalette", putpalette)


ZENNIT_NAMES = list(zimage.CMAPS)


def test_all_zennit_colormaps_are_built_in():
    assert set(ZENNIT_NAMES) <= set(viz.CMAPS)
    for name in ZENNIT_NAMES:
        assert viz.CMAPS[name] == zimage.CMAPS._sources[name]


@pytest.mark.parametrize("name", ZENNIT_NAMES + ["1:f00,0055a4,c0:fff", "8:123,456,789,e:abcdef"])
@pytest.mark.parametrize("level", [1.0, 0.5, 2.0])
def test_palette_and_colormap_match_zennit(name, level):
    ref = zimage.get_cmap(name)
    ours = viz.get_cmap(name)
    np.testing.assert_array_equal(viz.palette(name, level), zimage.palette(name, level))
    x = np.linspace(-0.1, 1.1, 301)
    np.testing.assert_allclose(ours(x), ref(x), atol=1e-12)
    np.testing.assert_allclose(ours._indices, ref._indices)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"symmetric": True},
        {"cmap": "coldnhot", "symmetric": True, "level": 1.5},
        {"vmin": -0.5, "vmax": 2.0, "cmap": "hot"},
        {"cmap": "france", "level": 0.7},
    ],
)
def test_imgify_matches_zennit(kwargs):
    a = RNG.normal(size=(7, 9)).astype(np.float32)
    ref = np.asarray(zimage.imgify(a, **kwargs).convert("RGB"))
    np.testing.assert_array_equal(viz.imgify(a, **kwargs), ref)


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((3, 6, 5), {}),  # channel-first RGB
        ((6, 5, 3), {"symmetric": True}),
        ((6, 5, 1), {"cmap": "coleus"}),
        ((5, 6, 4), {"grid": True}),
        ((5, 1, 6, 4), {"grid": True, "symmetric": True, "cmap": "seismic"}),
        ((5, 3, 6, 4), {"grid": (2, 3)}),
        ((3, 6, 4), {"grid": (1, 4), "gridfill": 200}),
    ],
)
def test_imgify_layouts_and_grids_match_zennit(shape, kwargs):
    a = RNG.normal(size=shape)
    ref = np.asarray(zimage.imgify(a, **kwargs).convert("RGB"))
    np.testing.assert_array_equal(viz.imgify(a, **kwargs), ref)


def test_imgify_uint8_is_used_as_is():
    a = RNG.integers(0, 256, size=(4, 5)).astype(np.uint8)
    ref = np.asarray(zimage.imgify(a, cmap="wred").convert("RGB"))
    np.testing.assert_array_equal(viz.imgify(a, cmap="wred"), ref)
    rgb = RNG.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
    np.testing.assert_array_equal(viz.imgify(rgb), rgb)


def test_grid_matches_zennit_gridify():
    a = RNG.normal(size=(7, 3, 4, 5))
    np.testing.assert_allclose(viz.grid(a), zimage.gridify(a))
    np.testing.assert_allclose(
        viz.grid(a, shape=(3, 3), fill_value=0.5), zimage.gridify(a, shape=(3, 3), fill_value=0.5)
    )


@pytest.mark.parametrize("sign", viz.SIGNS)
@pytest.mark.parametrize("outlier_perc", [2, 10, 0.5])
def test_normalize_attr_matches_captum(sign, outlier_perc):
    a = RNG.normal(size=(12, 10)).astype(np.float32)
    ref = cviz._normalize_attr(a, sign, outlier_perc)
    ours = viz.normalize_attr(a, sign, outlier_perc)
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)


def test_normalize_attr_edge_cases():
    np.testing.assert_array_equal(viz.normalize_attr(np.zeros((2, 2))), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="sign must be one of"):
        viz.normalize_attr(np.ones(3), "both")
    with pytest.raises(ValueError, match="outlier_perc must be in"):
        viz.normalize_attr(np.ones(3), outlier_perc=120)


@pytest.mark.parametrize(
    "sign,mpl_name",
    [("all", None), ("positive", "Greens"), ("negative", "Reds"), ("absolute_value", "Blues")],
)
def test_heatmap_matches_captums_matplotlib_colors(sign, mpl_name):
    a = RNG.normal(size=(10, 12, 3))
    norm = cviz._normalize_attr(a.sum(2), sign, 2)
    default, vmin, vmax = cviz._initialize_cmap_and_vmin_vmax(sign)
    cmap = matplotlib.colormaps[mpl_name] if mpl_name else default
    ref = cmap(matplotlib.colors.Normalize(vmin, vmax)(norm), bytes=True)[..., :3]
    ours = viz.heatmap(a, sign=sign)
    assert ours.shape == (10, 12, 3) and ours.dtype == np.uint8
    # the defaults are spec-string copies of matplotlib's maps: within a few levels
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 4
    # with a matplotlib colormap passed through, equal
    exact = viz.heatmap(a, sign=sign, cmap=cmap)
    assert np.abs(exact.astype(int) - ref.astype(int)).max() <= 1


def test_heatmap_channel_first_equals_channel_last():
    a = RNG.normal(size=(3, 6, 7))
    np.testing.assert_array_equal(viz.heatmap(a), viz.heatmap(np.moveaxis(a, 0, -1)))


@pytest.mark.parametrize("sign", ["positive", "negative", "absolute_value"])
def test_masked_image_and_alpha_scaling_match_captum(sign):
    a = RNG.normal(size=(8, 9, 3))
    img = RNG.uniform(size=(8, 9, 3))
    norm = cviz._normalize_attr(a.sum(2), sign, 2)
    img255 = cviz._prepare_image(img * 255)
    ref_masked = cviz._prepare_image(img255 * np.expand_dims(norm, 2))
    np.testing.assert_array_equal(viz.masked_image(a, img, sign=sign), ref_masked)
    ref_alpha = np.concatenate([img255, cviz._prepare_image(np.expand_dims(norm, 2) * 255)], 2)
    np.testing.assert_array_equal(viz.alpha_scaling(a, img, sign=sign), ref_alpha)


def test_blended_heat_map_blends():
    a = RNG.normal(size=(8, 9))
    img = RNG.uniform(size=(8, 9, 3))
    heat = viz.heatmap(a).astype(float)
    for alpha in (0.0, 1.0):
        out = viz.blended_heat_map(a, img, alpha_overlay=alpha)
        if alpha == 1.0:
            np.testing.assert_array_equal(out, heat.astype(np.uint8))
        else:
            gray = (img * 255).astype(int).mean(2)  # Captum's image preparation
            expected = np.round((gray - gray.min()) / (gray.max() - gray.min()) * 255)
            np.testing.assert_array_equal(out[..., 0], expected.astype(np.uint8))


def test_image_method_errors():
    a, img = np.ones((4, 4)), np.ones((4, 4, 3))
    with pytest.raises(ValueError, match="sign must be 'positive'"):
        viz.masked_image(a, img, sign="all")
    with pytest.raises(ValueError, match="height and width"):
        viz.alpha_scaling(a, np.ones((5, 4, 3)))
    with pytest.raises(ValueError, match="attr must have shape"):
        viz.heatmap(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="cmap must be one of"):
        viz.heatmap(a, cmap="nope")


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4)])
def test_png_round_trip(tmp_path, shape):
    img = RNG.integers(0, 256, size=shape).astype(np.uint8)
    path = viz.save_png(tmp_path / "x.png", img)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back.reshape(img.shape), img)


def test_png_errors(tmp_path):
    with pytest.raises(TypeError, match="image must be uint8"):
        viz.save_png(tmp_path / "x.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="image must have shape"):
        viz.save_png(tmp_path / "x.png", np.zeros((2, 2, 5), np.uint8))


def _rendered(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(buf))


@pytest.mark.parametrize(
    "method,sign",
    [
        ("heat_map", "all"),
        ("blended_heat_map", "absolute_value"),
        ("masked_image", "positive"),
        ("alpha_scaling", "negative"),
        ("original_image", "all"),
    ],
)
def test_visualize_image_attr_draws(method, sign):
    a = RNG.normal(size=(16, 16, 3))
    img = RNG.uniform(size=(16, 16, 3))
    fig, ax = viz.visualize_image_attr(
        a, img, method=method, sign=sign, show_colorbar=True, title="t", fig_size=(2, 2)
    )
    assert len(ax.images) >= 1
    px = _rendered(fig)
    assert px.shape[0] == 200 and px[..., :3].std() > 5


def test_visualize_image_attr_needs_image():
    with pytest.raises(ValueError, match="image is required"):
        viz.visualize_image_attr(np.ones((4, 4)), method="masked_image")


@pytest.mark.parametrize("method", ["overlay_individual", "overlay_combined", "colored_graph"])
def test_visualize_timeseries_attr_draws(method):
    a, d = RNG.normal(size=(30, 3)), RNG.normal(size=(30, 3))
    fig, axes = viz.visualize_timeseries_attr(
        a,
        d,
        method=method,
        sign="all",
        channel_labels=["a", "b", "c"],
        show_colorbar=True,
        title="t",
        fig_size=(3, 3),
    )
    n_axes = 1 if method == "overlay_combined" else 3
    assert len(np.atleast_1d(axes)) == n_axes
    assert _rendered(fig)[..., :3].std() > 5


def test_visualize_text_colors_and_escaping():
    out = viz.visualize_text(["<s>", "good", "bad"], np.array([0.0, 0.8, -0.5]), labels=["pos"])
    assert "&lt;s&gt;" in out and "<s>" not in out
    for v in (0.8, -0.5, 0.0):
        assert cviz._get_color(v) in out
    rows = viz.visualize_text(
        [["a", "b"], ["c"]], [np.array([2.0, -1.0]), np.array([3.0])], normalize=True, legend=False
    )
    assert cviz._get_color(1.0) in rows and cviz._get_color(-0.5) in rows
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        viz.visualize_text(["a", "b"], np.ones(3))


def test_jaxattr_imports_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import numpy as np, jaxattr\n"
        "from jaxattr import viz\n"
        "assert viz.heatmap(np.ones((2, 2))).shape == (2, 2, 3)\n"
        "try:\n"
        "    viz.visualize_image_attr(np.ones((2, 2)))\n"
        "except ImportError as e:\n"
        "    assert 'pip install jaxattr[viz]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    assert res.returncode == 0, res.stderr


def test_viz_lists_only_its_own_names():
    import jaxattr.viz as viz

    assert dir(viz) == sorted(viz.__all__)
    assert not {"np", "os", "re", "zlib"} & set(dir(viz))


# --------------------------------------------------------------------------------------
# Issue 20: Captum's multiple view and records, Zennit's imsave, PAIR's maps
# --------------------------------------------------------------------------------------

MULTI = [
    ("original_image", "all"),
    ("heat_map", "all"),
    ("heat_map", "positive"),
    ("blended_heat_map", "absolute_value"),
    ("masked_image", "negative"),
    ("alpha_scaling", "positive"),
]


def test_visualize_image_attr_multiple_draws_captums_arrays():
    a = RNG.normal(size=(9, 10, 3))
    img = RNG.uniform(size=(9, 10, 3))
    methods, signs = zip(*MULTI, strict=True)
    titles = [f"{m}/{s}" for m, s in MULTI]
    ref_fig, ref_axes = cviz.visualize_image_attr_multiple(
        a,
        img,
        list(methods),
        list(signs),
        titles=titles,
        use_pyplot=False,
        outlier_perc=3,
        alpha_overlay=0.4,
    )
    fig, axes = viz.visualize_image_attr_multiple(
        a, img, methods, signs, titles=titles, outlier_perc=3, alpha_overlay=0.4
    )
    assert len(axes) == len(ref_axes) == len(MULTI)
    for ours, ref in zip(axes, ref_axes, strict=True):
        assert ours.get_title() == ref.get_title()
        assert len(ours.images) == len(ref.images)
        for oi, ri in zip(ours.images, ref.images, strict=True):
            np.testing.assert_allclose(
                np.asarray(oi.get_array(), float), np.asarray(ri.get_array(), float), atol=1e-12
            )
            assert oi.get_alpha() == ri.get_alpha()
    assert _rendered(fig)[..., :3].std() > 5


def test_visualize_image_attr_multiple_one_view_and_errors():
    fig, ax = viz.visualize_image_attr_multiple(np.ones((4, 4)), None, ["heat_map"], ["all"])
    assert not isinstance(ax, list) and len(ax.images) == 1
    with pytest.raises(ValueError, match="one entry per view"):
        viz.visualize_image_attr_multiple(np.ones((4, 4)), None, ["heat_map"], [])
    with pytest.raises(ValueError, match="one title per view"):
        viz.visualize_image_attr_multiple(
            np.ones((4, 4)), None, ["heat_map"], ["all"], titles=["a", "b"]
        )


def _markup(s: str) -> str:
    """Captum's text HTML and jaxattr's, compared without whitespace and row tags (Captum
    ends each row with an opening <tr>)."""
    return "".join(s.split()).replace("</tr>", "").replace("<tr>", "")


def test_visualize_text_records_match_captum(capsys):
    import torch

    records = [
        viz.VisualizationDataRecord(
            np.array([0.9, -0.3, 0.0, 0.2]),
            0.87,
            "pos",
            "pos",
            "pos",
            1.25,
            ["<s>", "great", "film", "</s>"],
            0.01,
        ),
        viz.VisualizationDataRecord(
            torch.tensor([-1.5, 0.5]), 0.40, 1, 0, 1, -0.5, ["dull", "plot"], 0.2
        ),
    ]
    captum_records = [
        cviz.VisualizationDataRecord(*(getattr(r, k) for k in r.__slots__)) for r in records
    ]
    for legend in (True, False):
        ref = cviz.visualize_text(captum_records, legend=legend).data
        ours = viz.visualize_text(records, legend=legend)
        assert _markup(ours) == _markup(ref)
    assert "#s" in ours and "</tr>" in ours
    capsys.readouterr()  # Captum displays through IPython (prints outside a notebook)


def test_visualize_text_record_errors_and_escaping():
    rec = viz.VisualizationDataRecord([0.5], 0.5, "a&b", 1, 1, 0.1, ["<b>x"], 0.0)
    out = viz.visualize_text(rec)
    assert "a&amp;b" in out and "<b>x" not in out
    with pytest.raises(ValueError, match="taken from the records"):
        viz.visualize_text([rec], [1.0])
    with pytest.raises(ValueError, match="one per token"):
        viz.visualize_text([viz.VisualizationDataRecord([0.5], 0.5, 1, 1, 1, 0.1, ["a", "b"], 0.0)])
    with pytest.raises(TypeError, match="attributions is missing"):
        viz.visualize_text(["a", "b"])


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((6, 7), {"symmetric": True, "cmap": "coldnhot"}),
        ((6, 7, 3), {}),
        ((5, 1, 4, 6), {"grid": True, "cmap": "hot", "level": 1.5}),
    ],
)
def test_imsave_matches_zennit(tmp_path, shape, kwargs):
    a = RNG.normal(size=shape)
    zimage.imsave(tmp_path / "ref.png", a, **kwargs)
    viz.imsave(tmp_path / "ours.png", a, **kwargs)
    ref = np.asarray(Image.open(tmp_path / "ref.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "ours.png")), ref)
    buf = io.BytesIO()
    viz.imsave(buf, a, **kwargs)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), ref)


def test_imsave_other_formats_go_through_pillow(tmp_path):
    a = RNG.normal(size=(6, 7))
    zimage.imsave(tmp_path / "ref.bmp", a, cmap="france")
    viz.imsave(tmp_path / "ours.bmp", a, cmap="france")
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "ours.bmp")),
        np.asarray(Image.open(tmp_path / "ref.bmp").convert("RGB")),
    )
    with pytest.raises(ValueError, match="writer_params are Pillow's options"):
        viz.imsave(tmp_path / "x.png", a, writer_params={"optimize": True})


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dim", [None, (2, 3), (1,)])
def test_interval_norm_bounds_matches_zennit(symmetric, dim):
    a = RNG.normal(size=(3, 2, 4, 5))
    lo, hi = viz.interval_norm_bounds(a, symmetric=symmetric, dim=dim)
    zlo, zhi = zimage.interval_norm_bounds(a, symmetric=symmetric, dim=dim)
    np.testing.assert_array_equal(lo, zlo)
    np.testing.assert_array_equal(hi, zhi)


@pytest.mark.parametrize("percentile", [99, 90, 50])
def test_pair_grayscale_and_diverging_match_saliency(percentile):
    pair = pytest.importorskip("saliency.core")
    a = RNG.normal(size=(12, 11, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        viz.visualize_image_grayscale(a, percentile), pair.VisualizeImageGrayscale(a, percentile)
    )
    np.testing.assert_array_equal(
        viz.visualize_image_diverging(a, percentile), pair.VisualizeImageDiverging(a, percentile)
    )
    assert viz.VisualizeImageGrayscale is viz.visualize_image_grayscale
    with pytest.raises(ValueError, match=r"image_3d must have shape \(H, W, C\)"):
        viz.visualize_image_grayscale(a[..., 0])
