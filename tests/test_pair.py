"""Parity of Blur IG, Guided IG and XRAI with PAIR's ``saliency`` package (0.2.1).

The same tiny JAX CNN serves both sides: PAIR gets it through a ``call_model_function``
that returns the JAX input gradient (PAIR works on HxWxC images, jaxattr on NCHW batches,
so the callback transposes). PAIR runs one image at a time; jaxattr the batch.

Tolerances: Blur IG, float32 blurs on both sides (SciPy's ``gaussian_filter`` against
jaxattr's blur matrices) divided by ``grad_step``: ``atol = 1e-4 * max|reference|``.
Guided IG: PAIR walks its path in float64, jaxattr in float32, with the same feature
selections: ``atol = 1e-5 * max|reference|``. XRAI on the same segments and base
attribution: the same ranking of regions (exact integer segments) and region densities to
``1e-5`` relative; with PAIR's own integrated gradients ``1e-4``.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr import _caching
from jaxattr import _pair as jaxattr_pair
from jaxattr._pair import blur_ig, guided_ig

sc = pytest.importorskip("saliency.core")


@pytest.fixture(autouse=True, scope="module")
def _fresh_caches():
    _caching.clear_caches()
    yield
    _caching.clear_caches()


_K = jax.random.split(jax.random.key(0), 4)
_W1 = jax.random.normal(_K[0], (4, 3, 3, 3)) * 0.3
_W2 = jax.random.normal(_K[1], (4 * 12 * 12, 5)) * 0.05


def cnn(x):
    """(N, 3, 12, 12) -> (N, 5): conv 3x3, tanh, dense."""
    h = jax.lax.conv_general_dilated(
        x, _W1, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return jnp.tanh(h).reshape(len(x), -1) @ _W2


X = jax.random.uniform(_K[2], (2, 3, 12, 12))
TARGET = 2
_GRAD = jax.jit(jax.grad(lambda x: cnn(x)[:, TARGET].sum()))


def call_model(x_batch, call_model_args=None, expected_keys=None):
    """PAIR's callback: HxWxC batches in, input gradients of the target logit out."""
    xb = jnp.asarray(np.asarray(x_batch, np.float32).transpose(0, 3, 1, 2))
    return {sc.INPUT_OUTPUT_GRADIENTS: np.asarray(_GRAD(xb)).transpose(0, 2, 3, 1)}


def hwc(a) -> np.ndarray:
    return np.asarray(a).transpose(1, 2, 0)


def assert_close(ours, ref, rel):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=rel * np.abs(ref).max())


@pytest.fixture
def numpy2_quantile(monkeypatch):
    """PAIR's Guided IG calls ``np.quantile(..., interpolation=)``, removed in NumPy 2:
    give its module a NumPy whose quantile maps the old keyword to ``method``."""
    import saliency.core.guided_ig as module

    shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})

    def quantile(a, q, interpolation="linear", **kw):
        return np.quantile(a, q, method=interpolation, **kw)

    shim.quantile = quantile
    monkeypatch.setattr(module, "np", shim)


# ---- Blur IG --------------------------------------------------------------------------


@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_ig_parity(sqrt):
    ours = blur_ig(cnn, X, target=TARGET, max_sigma=5.0, steps=12, sqrt=sqrt)
    for n in range(len(X)):
        ref = sc.BlurIG().GetMask(hwc(X[n]), call_model, max_sigma=5.0, steps=12, sqrt=sqrt)
        assert_close(hwc(ours[n]), ref, 1e-4)


def test_blur_ig_grad_step_and_chunks():
    ours = blur_ig(cnn, X, target=TARGET, max_sigma=3.0, steps=8, grad_step=0.05, batch_size=3)
    ref = sc.BlurIG().GetMask(hwc(X[1]), call_model, max_sigma=3.0, steps=8, grad_step=0.05)
    assert_close(hwc(ours[1]), ref, 1e-4)
    whole = blur_ig(cnn, X, target=TARGET, max_sigma=3.0, steps=8, grad_step=0.05)
    np.testing.assert_allclose(ours, whole, atol=1e-6)


def test_blur_ig_channels_last_jit_vmap():
    nhwc = lambda x: cnn(jnp.moveaxis(x, -1, 1))  # noqa: E731
    xl = jnp.moveaxis(X, 1, -1)
    a = blur_ig(nhwc, xl, target=TARGET, max_sigma=2.0, steps=4, channel_axis=-1)
    b = blur_ig(cnn, X, target=TARGET, max_sigma=2.0, steps=4)
    np.testing.assert_allclose(jnp.moveaxis(a, -1, 1), b, atol=1e-6)
    j = jax.jit(lambda x: blur_ig(cnn, x, target=TARGET, max_sigma=2.0, steps=4))(X)
    np.testing.assert_allclose(j, b, atol=1e-6)
    v = jax.vmap(lambda x: blur_ig(cnn, x[None], target=TARGET, max_sigma=2.0, steps=4)[0])(X)
    np.testing.assert_allclose(v, b, atol=1e-6)


def test_blur_ig_errors():
    with pytest.raises(ValueError, match="max_sigma must be > 0"):
        blur_ig(cnn, X, target=TARGET, max_sigma=0.0)
    with pytest.raises(ValueError, match="grad_step must be > 0"):
        blur_ig(cnn, X, target=TARGET, grad_step=-1.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        blur_ig(cnn, X, target=TARGET, steps=0)
    with pytest.raises(ValueError, match="channel_axis must name a non-batch axis"):
        blur_ig(cnn, X, target=TARGET, channel_axis=0)


# ---- Guided IG ------------------------------------------------------------------------


@pytest.mark.parametrize("max_dist,fraction", [(0.02, 0.25), (0.0, 0.25), (1.0, 0.1)])
def test_guided_ig_parity(numpy2_quantile, max_dist, fraction):
    base = 0.2
    ours = guided_ig(
        cnn, X, baselines=base, target=TARGET, steps=16, max_dist=max_dist, fraction=fraction
    )
    for n in range(len(X)):
        ref = sc.GuidedIG().GetMask(
            hwc(X[n]),
            call_model,
            x_baseline=np.full((12, 12, 3), base, np.float32),
            x_steps=16,
            max_dist=max_dist,
            fraction=fraction,
        )
        assert_close(hwc(ours[n]), ref, 1e-5)


def test_guided_ig_without_deviation_is_left_riemann_ig_and_jits():
    # max_dist=0 keeps the path on the straight line: integrated gradients, left Riemann
    attr = guided_ig(cnn, X, baselines=0.1, target=TARGET, steps=8, max_dist=0.0)
    ig = jaxattr.integrated_gradients(
        cnn, X, baselines=0.1, target=TARGET, n_steps=8, method="riemann_left"
    )
    np.testing.assert_allclose(attr, ig, rtol=0, atol=1e-5 * np.abs(ig).max())
    j = jax.jit(lambda x: guided_ig(cnn, x, target=TARGET, steps=4))(X)
    np.testing.assert_allclose(j, guided_ig(cnn, X, target=TARGET, steps=4), atol=1e-7)


def test_guided_ig_errors():
    with pytest.raises(ValueError, match="fraction must be <= 1.0, got 1.5"):
        guided_ig(cnn, X, target=TARGET, fraction=1.5)
    with pytest.raises(ValueError, match="max_dist must be >= 0.0"):
        guided_ig(cnn, X, target=TARGET, max_dist=-0.1)
    with pytest.raises(ValueError, match="baselines has shape"):
        guided_ig(cnn, X, baselines=jnp.zeros((5, 3, 12, 12)), target=TARGET)


# ---- Felzenszwalb segmentation --------------------------------------------------------


def _blocky_image(h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3))
    img[: h // 2] = 0.3
    img[:, w // 2 :] += 0.5
    img[10:30, 10:30, 1] += 0.4
    return img + rng.normal(0, 0.05, img.shape)


@pytest.mark.parametrize("scale,sigma,min_size", [(50, 0.8, 20), (1, 0.0, 5), (500, 1.5, 100)])
def test_felzenszwalb_matches_scikit_image(scale, sigma, min_size):
    from skimage.segmentation import felzenszwalb as reference

    img = _blocky_image()
    ours = jaxattr_pair.felzenszwalb(img, scale, sigma, min_size)
    np.testing.assert_array_equal(ours, reference(img, scale=scale, sigma=sigma, min_size=min_size))
    gray = jaxattr_pair.felzenszwalb(img[..., 0], scale, sigma, min_size)
    np.testing.assert_array_equal(
        gray, reference(img[..., 0], scale=scale, sigma=sigma, min_size=min_size, channel_axis=None)
    )


def test_xrai_segments_match_pair():
    import saliency.core.xrai as pair_xrai

    img = _blocky_image().astype(np.float32)
    ref = np.stack(pair_xrai._get_segments_felzenszwalb(img, resize_image=False))
    ours = jaxattr_pair.xrai_segments(img[None], channel_axis=-1, resize=None)
    np.testing.assert_array_equal(ours[0], ref)
    nchw = jaxattr_pair.xrai_segments(np.moveaxis(img, -1, 0)[None], resize=None)
    np.testing.assert_array_equal(nchw, ours)


# ---- XRAI -----------------------------------------------------------------------------

_W3 = jax.random.normal(_K[3], (4 * 32 * 32, 5)) * 0.05


def cnn32(x):
    """(N, 3, 32, 32) -> (N, 5)."""
    h = jax.lax.conv_general_dilated(
        x, _W1, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return jnp.tanh(h).reshape(len(x), -1) @ _W3


X32 = jax.random.uniform(_K[2], (2, 3, 32, 32)).at[:, :, 8:20, 4:28].add(0.8)
_GRAD32 = jax.jit(jax.grad(lambda x: cnn32(x)[:, TARGET].sum()))


def call_model32(x_batch, call_model_args=None, expected_keys=None):
    xb = jnp.asarray(np.asarray(x_batch, np.float32).transpose(0, 3, 1, 2))
    return {sc.INPUT_OUTPUT_GRADIENTS: np.asarray(_GRAD32(xb)).transpose(0, 2, 3, 1)}


@pytest.fixture(scope="module")
def segs32():
    """Felzenszwalb at four scales, lightly dilated: 20-30 overlapping masks per image."""
    return jaxattr_pair.xrai_segments(
        X32, resize=None, scales=(20.0, 50.0, 150.0, 400.0), min_size=12, dilation_radius=1
    )


def _pair_params(**kw):
    params = sc.XRAIParameters(**{k: v for k, v in kw.items() if k != "min_pixel_diff"})
    params.experimental_params["min_pixel_diff"] = kw.get("min_pixel_diff", 50)
    return params


@pytest.mark.parametrize(
    "algorithm,area_threshold,min_pixel_diff",
    [("full", 1.0, 8), ("full", 0.4, 8), ("fast", 1.0, 8), ("full", 1.0, 50)],
)
def test_xrai_parity(segs32, algorithm, area_threshold, min_pixel_diff):
    opts = dict(
        steps=8,
        algorithm=algorithm,
        area_threshold=area_threshold,
        return_xrai_segments=True,
        return_ig_attributions=True,
    )
    params = jaxattr_pair.XRAIParameters(
        **opts, experimental_params={"min_pixel_diff": min_pixel_diff}
    )
    out = jaxattr_pair.xrai(
        cnn32, X32, target=TARGET, segments=segs32, extra_parameters=params, return_details=True
    )
    for n in range(len(X32)):
        masks = [m for m in segs32[n] if m.any()]
        ref = sc.XRAI().GetMaskWithDetails(
            hwc(X32[n]),
            call_model32,
            segments=masks,
            batch_size=8,
            extra_parameters=_pair_params(**opts, min_pixel_diff=min_pixel_diff),
        )
        np.testing.assert_array_equal(out.segments[n], ref.segments)
        assert_close(out.attribution_mask[n], ref.attribution_mask, 1e-5)
        ig = np.mean(ref.ig_attribution, axis=0)
        assert_close(hwc(out.ig_attribution.mean(0)[n]), ig, 1e-4)
        np.testing.assert_allclose(hwc(out.baselines[0][n]), ref.baselines[0])
    if min_pixel_diff == 8:  # the case is not trivial: many regions were ranked
        assert int(out.segments.max()) >= 8


def test_xrai_base_attribution_masks_and_baselines(segs32):
    base = jaxattr.saliency(cnn32, X32, target=TARGET, abs=False)
    params = jaxattr_pair.XRAIParameters(
        return_xrai_segments=True,
        flatten_xrai_segments=False,
        experimental_params={"min_pixel_diff": 8},
    )
    out = jaxattr_pair.xrai(
        None,
        X32,
        segments=segs32,
        base_attribution=base,
        extra_parameters=params,
        return_details=True,
    )
    ref = sc.XRAI().GetMaskWithDetails(
        hwc(X32[0]),
        call_model32,
        segments=[m for m in segs32[0] if m.any()],
        base_attribution=hwc(base[0]),
        extra_parameters=_pair_params(
            return_xrai_segments=True, flatten_xrai_segments=False, min_pixel_diff=8
        ),
    )
    assert_close(out.attribution_mask[0], ref.attribution_mask, 1e-5)
    k = len(ref.segments)
    np.testing.assert_array_equal(out.segments[0, :k], np.stack(ref.segments))
    assert not np.asarray(out.segments[0, k:]).any()
    # user baselines, channels last, integer label segments, inside jit
    labels = (np.arange(32)[:, None] // 8) * 4 + np.arange(32)[None] // 8
    nhwc = lambda x: cnn32(jnp.moveaxis(x, -1, 1))  # noqa: E731
    params = jaxattr_pair.XRAIParameters(steps=4, experimental_params={"min_pixel_diff": 8})
    xl = jnp.moveaxis(X32, 1, -1)
    a = jaxattr_pair.xrai(
        nhwc,
        xl,
        baselines=[0.0, 1.0],
        target=TARGET,
        segments=labels,
        channel_axis=-1,
        extra_parameters=params,
    )
    ref = sc.XRAI().GetMask(
        hwc(X32[1]),
        call_model32,
        segments=[labels == i for i in range(16)],
        batch_size=4,
        baselines=[np.zeros((32, 32, 3), np.float32), np.ones((32, 32, 3), np.float32)],
        extra_parameters=_pair_params(steps=4, min_pixel_diff=8),
    )
    assert_close(a[1], ref, 1e-4)
    masks = jnp.asarray(labels[None] == np.arange(16)[:, None, None])
    j = jax.jit(
        lambda x: jaxattr_pair.xrai(
            nhwc,
            x,
            baselines=[0.0, 1.0],
            target=TARGET,
            segments=masks,
            channel_axis=-1,
            extra_parameters=params,
        )
    )(xl)
    np.testing.assert_allclose(j, a, atol=1e-6)


def test_xrai_errors(segs32):
    with pytest.raises(ValueError, match="algorithm must be one of"):
        jaxattr_pair.xrai(
            cnn32,
            X32,
            target=1,
            segments=segs32,
            extra_parameters=jaxattr_pair.XRAIParameters(algorithm="slow"),
        )
    with pytest.raises(ValueError, match=r"boolean segments must have shape \(S, 32, 32\)"):
        jaxattr_pair.xrai(cnn32, X32, target=1, segments=np.zeros((3, 8, 8), bool))
    with pytest.raises(ValueError, match="base_attribution must have x's shape"):
        jaxattr_pair.xrai(None, X32, segments=segs32, base_attribution=np.zeros((2, 5)))
    with pytest.raises(TypeError, match="needs fn"):
        jaxattr_pair.xrai(None, X32, segments=segs32)
    with pytest.raises(ValueError, match="batch of images"):
        jaxattr_pair.xrai(cnn32, X32[:, 0, 0], target=1, segments=segs32)
