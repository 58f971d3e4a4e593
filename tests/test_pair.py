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
        cnn, X, base, target=TARGET, steps=16, max_dist=max_dist, fraction=fraction
    )
    for n in range(len(X)):
        ref = sc.GuidedIG().GetMask(
            hwc(X[n]), call_model, x_baseline=np.full((12, 12, 3), base, np.float32),
            x_steps=16, max_dist=max_dist, fraction=fraction,
        )
        assert_close(hwc(ours[n]), ref, 1e-5)


def test_guided_ig_without_deviation_is_left_riemann_ig_and_jits():
    # max_dist=0 keeps the path on the straight line: integrated gradients, left Riemann
    attr = guided_ig(cnn, X, 0.1, target=TARGET, steps=8, max_dist=0.0)
    ig = jaxattr.integrated_gradients(
        cnn, X, 0.1, target=TARGET, n_steps=8, method="riemann_left"
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
        guided_ig(cnn, X, jnp.zeros((5, 3, 12, 12)), target=TARGET)
