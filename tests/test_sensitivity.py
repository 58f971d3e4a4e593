"""Sobol and HSIC attribution (Xplique's methods) against analytic ground truth.

Xplique is TensorFlow-only and not installed here, so the checks are analytic:

- the Sobol sequence equals SciPy's ``qmc.Sobol(scramble=False)`` where the direction
  numbers are Joe and Kuo's (first 13 dimensions) and every dimension (200 checked) is a
  (0, m, 1)-net: 2^m points fill the 2^m intervals of each axis, scrambled or not;
- total Sobol indices of the Ishigami function (a=7, b=0.1; Ishigami and Homma, 1990),
  whose analytic values are ST = (0.5576, 0.4424, 0.2437), within 0.02 for all five
  estimators at nb_design=1024 (observed error <= 0.007);
- HSIC on a full-factorial binary design with y = x_0: exactly (n/4)(1 - e^-2) for x_0
  and 0 for x_1 (Xplique's estimator, median-width output kernel), and on random designs
  equal (1e-4 relative) to Gretton's biased estimator tr(K H L H) / (n-1)^2 of Novello
  et al. (2022) up to Xplique's factor (n-1)^2 / n;
- on images, an additive model's total indices are w_i^2 / sum w^2 per cell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import _caching
from jaxattr import _sensitivity as gsa


@pytest.fixture(autouse=True, scope="module")
def _fresh_caches():
    _caching.clear_caches()
    yield
    _caching.clear_caches()


# ---- Sobol sequence -------------------------------------------------------------------


def test_sobol_sequence_matches_scipy_and_is_a_net():
    qmc = pytest.importorskip("scipy.stats.qmc")
    ours = np.asarray(gsa.sobol_sequence(256, 13))
    np.testing.assert_array_equal(ours, qmc.Sobol(13, scramble=False).random(256))
    for key in (None, jax.random.key(3)):
        pts = np.asarray(gsa.sobol_sequence(256, 200, key=key))
        assert pts.min() >= 0 and pts.max() < 1
        cells = np.floor(pts * 256).astype(int)
        assert all(len(np.unique(cells[:, j])) == 256 for j in range(200))
    scrambled = gsa.sobol_sequence(8, 4, key=jax.random.key(0))
    assert not np.allclose(scrambled, gsa.sobol_sequence(8, 4))
    jitted = jax.jit(lambda k: gsa.sobol_sequence(8, 4, key=k))(jax.random.key(0))
    np.testing.assert_array_equal(jitted, scrambled)


def test_sobol_design_layout():
    d = gsa.sobol_design(4, 3, key=jax.random.key(1))
    a, b, c = d[:4], d[4:8], d[8:].reshape(3, 4, 3)
    for i in range(3):
        expected = a.at[:, i].set(b[:, i])
        np.testing.assert_array_equal(c[i], expected)


# ---- Ishigami --------------------------------------------------------------------------

_A, _B = 7.0, 0.1


def ishigami(u):
    """Ishigami's function of three variables uniform on [-pi, pi], from [0, 1]^3."""
    x = -np.pi + 2 * np.pi * u
    return jnp.sin(x[:, 0]) + _A * jnp.sin(x[:, 1]) ** 2 + _B * x[:, 2] ** 4 * jnp.sin(x[:, 0])


def ishigami_total_indices():
    pi = np.pi
    var = _A**2 / 8 + _B * pi**4 / 5 + _B**2 * pi**8 / 18 + 0.5
    v1 = 0.5 * (1 + _B * pi**4 / 5) ** 2
    v2 = _A**2 / 8
    v13 = 8 * _B**2 * pi**8 / 225
    return np.array([(v1 + v13) / var, v2 / var, v13 / var])


@pytest.mark.parametrize("key", [None, 0, 1])
def test_ishigami_total_indices(key):
    expected = ishigami_total_indices()
    np.testing.assert_allclose(expected, [0.5576, 0.4424, 0.2437], atol=1e-4)
    design = gsa.sobol_design(1024, 3, key=None if key is None else jax.random.key(key))
    y = ishigami(design)
    for estimator in gsa.SOBOL_ESTIMATORS:
        got = gsa.sobol_total_indices(y, 1024, estimator)
        np.testing.assert_allclose(got, expected, atol=0.02, err_msg=estimator)
    # trailing axes are independent problems
    both = gsa.sobol_total_indices(jnp.stack([y, 2 * y], 1), 1024)
    np.testing.assert_allclose(both[:, 0], both[:, 1], rtol=1e-5)


# ---- HSIC ------------------------------------------------------------------------------


def test_hsic_full_factorial_closed_form():
    x = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 8)  # n = 32
    n = x.shape[0]
    got = gsa.hsic_indices(x, x[:, 0])
    # y = x0: median width 0.5, L = 1 (same x0) or e^-2; x1 is balanced within each x0
    np.testing.assert_allclose(got, [n / 4 * (1 - np.exp(-2.0)), 0.0], atol=1e-5)


def _gretton(xi, y, kernel):
    """Gretton's biased HSIC, tr(K H L H) / (n - 1)^2, K = 1 + k (float64, from scratch)."""
    n = len(y)
    u, v = xi[:, None], xi[None, :]
    if kernel == "binary":
        k = 0.5 - (u - v) ** 2
    elif kernel == "rbf":
        k = np.exp(-((u - v) ** 2) / (2 * 0.25))
    else:
        k = ((u - v) ** 2 - np.abs(u - v) + 1 / 6) / 2 + (np.abs(u) - 0.5) * (np.abs(v) - 0.5)
    width = np.percentile(y, 50)
    gram = np.exp(-((y[:, None] - y[None]) ** 2) / (2 * width**2))
    h = np.eye(n) - 1.0 / n
    return np.trace((1 + k) @ h @ gram @ h) / (n - 1) ** 2


@pytest.mark.parametrize("kernel", gsa.HSIC_KERNELS)
def test_hsic_matches_the_papers_estimator(kernel):
    rng = np.random.default_rng(0)
    x = rng.random((64, 5))
    if kernel == "binary":
        x = np.round(x)
    y = 2.0 + np.sin(3 * x[:, 0]) + x[:, 1] * x[:, 2]
    n = len(y)
    got = np.asarray(gsa.hsic_indices(x, y, kernel, batch_size=2))
    paper = np.array([_gretton(x[:, i], y, kernel) for i in range(5)])
    np.testing.assert_allclose(got * n / (n - 1) ** 2, paper, rtol=1e-4, atol=1e-7)
    assert got[0] > got[3] and got[0] > got[4]


# ---- Attribution on images ---------------------------------------------------------------

_WEIGHTS = jnp.array([3.0, 0.0, 1.0, 2.0])  # one per 4x4 cell of an 8x8 image


def additive(x):
    """(N, 1, 8, 8) -> (N, 2): column 1 is sum_i w_i * (sum of cell i)."""
    cells = x.reshape(len(x), 2, 4, 2, 4).sum((2, 4)).reshape(len(x), 4)
    return jnp.stack([cells.sum(1), cells @ _WEIGHTS], 1)


def test_sobol_attribution_additive_model():
    x = jnp.ones((2, 1, 8, 8)).at[1].set(2.0)
    heat = gsa.sobol_attribution(
        additive, x, target=1, grid_size=2, nb_design=128, key=jax.random.key(0), batch_size=200
    )
    # inpainting of a constant image: f = sum_i w_i * c * 16 * M_i, so ST_i = w_i^2 / sum w^2
    cells = (_WEIGHTS**2 / jnp.sum(_WEIGHTS**2)).reshape(1, 2, 2)
    expected = jax.image.resize(cells, (1, 8, 8), "cubic")  # the grid resized as Xplique
    np.testing.assert_allclose(heat, jnp.broadcast_to(expected, heat.shape), atol=0.03)
    nhwc = lambda z: additive(jnp.moveaxis(z, -1, 1))  # noqa: E731
    last = gsa.sobol_attribution(
        nhwc,
        jnp.moveaxis(x, 1, -1),
        target=1,
        grid_size=2,
        nb_design=128,
        key=jax.random.key(0),
        channel_axis=-1,
    )
    np.testing.assert_allclose(last, heat, atol=1e-5)


def test_perturbations_and_jit():
    x = jax.random.uniform(jax.random.key(0), (1, 1, 8, 8))
    m = jnp.round(jax.random.uniform(jax.random.key(1), (1, 1, 8, 8)))
    axes = (2, 3)
    np.testing.assert_allclose(gsa._perturb("inpainting", 1.0, x, m, axes), x * m)
    np.testing.assert_allclose(gsa._perturb("amplitude", 2.0, x, m, axes), x * (m - 0.5) * 2)
    custom = lambda z, mask: z + mask  # noqa: E731
    np.testing.assert_allclose(gsa._perturb(custom, 1.0, x, m, axes), x + m)
    # OpenCV's box blur: anchor at size // 2, BORDER_REFLECT_101
    img = np.asarray(x[0, 0])
    pad = np.pad(img, ((2, 1), (2, 1)), mode="reflect")
    box = np.array([[pad[i : i + 4, j : j + 4].mean() for j in range(8)] for i in range(8)])
    np.testing.assert_allclose(gsa._box_blur(x, axes, 4)[0, 0], box, atol=1e-6)
    blurred = gsa._perturb("blurring", 4.0, x, m, axes)
    np.testing.assert_allclose(blurred[0, 0], img * m[0, 0] + (1 - m[0, 0]) * box, atol=1e-6)
    jitted = jax.jit(
        lambda z, k: gsa.hsic_attribution(
            additive,
            z,
            target=1,
            grid_size=2,
            nb_design=32,
            key=k,
            perturbation_function="blurring",
            perturbation_sigma=3,
        )
    )(x, jax.random.key(2))
    eager = gsa.hsic_attribution(
        additive,
        x,
        target=1,
        grid_size=2,
        nb_design=32,
        key=jax.random.key(2),
        perturbation_function="blurring",
        perturbation_sigma=3,
    )
    np.testing.assert_allclose(jitted, eager, atol=1e-5)


def test_hsic_attribution_is_the_pipeline():
    x = jnp.ones((1, 1, 8, 8))
    key = jax.random.key(4)
    heat = gsa.hsic_attribution(additive, x, target=1, grid_size=2, nb_design=64, key=key)
    design = jnp.round(gsa.sobol_sequence(64, 4, key=key))
    masks = jnp.repeat(jnp.repeat(design.reshape(64, 1, 2, 2), 4, 2), 4, 3)
    y = additive(x * masks)[:, 1]
    cells = gsa.hsic_indices(design, y)
    expected = jax.image.resize(cells.reshape(1, 2, 2), (1, 8, 8), "cubic")
    np.testing.assert_allclose(heat, expected, rtol=1e-4, atol=1e-5)
    assert int(jnp.argmax(cells)) == 0 and float(cells[1]) < 0.05 * float(cells[0])


def test_errors():
    x = jnp.ones((1, 1, 8, 8))
    with pytest.raises(ValueError, match="nb_design must be a power of two, got 24"):
        gsa.sobol_attribution(additive, x, target=1, nb_design=24)
    with pytest.raises(ValueError, match="estimator must be one of"):
        gsa.sobol_attribution(additive, x, target=1, estimator="sobol")
    with pytest.raises(ValueError, match="kernel must be one of"):
        gsa.hsic_attribution(additive, x, target=1, kernel="linear")
    with pytest.raises(ValueError, match="perturbation_function must be one of"):
        gsa.sobol_attribution(additive, x, target=1, perturbation_function="noise")
    with pytest.raises(ValueError, match="nb_channels must be 1 or the number of channels"):
        gsa.sobol_attribution(additive, x, target=1, nb_channels=3)
    with pytest.raises(ValueError, match="batch of images"):
        gsa.sobol_attribution(additive, x[:, 0, 0], target=1)
    with pytest.raises(ValueError, match="outputs must hold nb_design"):
        gsa.sobol_total_indices(jnp.ones(10), 4)
