"""Axioms on analytic functions whose attributions are known in closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr


def test_quadrature_matches_captum_conventions():
    a, w = jaxattr.quadrature("riemann_trapezoid", 5)
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(w, [0.1, 0.2, 0.2, 0.2, 0.1])  # Captum's, summing to (n-1)/n
    a, w = jaxattr.quadrature("riemann_middle", 4)
    np.testing.assert_allclose(a, [0.125, 0.375, 0.625, 0.875])
    a, w = jaxattr.quadrature("gausslegendre", 6)
    np.testing.assert_allclose(w.sum(), 1.0)
    # exact for polynomials of degree 2n - 1 = 11
    np.testing.assert_allclose((w * a**11).sum(), 1 / 12)


@pytest.mark.parametrize("method", jaxattr.QUADRATURES)
def test_linear_function_is_exact(method):
    w = jnp.array([1.0, -2.0, 3.0, 0.5])
    fn = lambda x: x @ w
    x = jnp.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 2.0, 1.0]])
    b = jnp.array([0.5, 0.5, 0.5, 0.5])
    attr = jaxattr.integrated_gradients(fn, x, baselines=b, n_steps=3, method=method)
    # trapezoid's weights sum to (n-1)/n as in Captum, so it is exact up to that factor
    factor = (3 - 1) / 3 if method == "riemann_trapezoid" else 1.0
    np.testing.assert_allclose(attr, factor * (x - b[None]) * w[None], rtol=1e-6)


def test_product_has_closed_form():
    """f(x) = x1 x2 from 0: IG gives x1 x2 / 2 to each feature (exact for Gauss-Legendre)."""
    fn = lambda x: x[:, 0] * x[:, 1]
    x = jnp.array([[2.0, 3.0], [-1.0, 4.0]])
    attr = jaxattr.integrated_gradients(fn, x, n_steps=2)
    np.testing.assert_allclose(attr, jnp.stack([x[:, 0] * x[:, 1] / 2] * 2, 1), rtol=1e-6)


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_completeness_delta_vanishes_as_steps_grow(method):
    fn = lambda x: jnp.sin(x).sum(1) + (x**3).sum(1) * 0.1
    x = jnp.array([[1.0, -2.0, 0.5], [0.3, 2.5, -1.0]])
    deltas = [
        float(
            jnp.abs(
                jaxattr.integrated_gradients(fn, x, n_steps=n, method=method, return_delta=True)[1]
            ).max()
        )
        for n in (4, 16, 64)
    ]
    assert deltas[0] > deltas[1] > deltas[2] or deltas[2] < 1e-5, deltas
    # Captum's trapezoid weights sum to (n-1)/n, so its error only falls as 1/n
    assert deltas[2] < (0.05 if method == "riemann_trapezoid" else 1e-3), deltas


def test_riemann_error_is_first_or_second_order():
    fn = lambda x: jnp.exp(x).sum(1)
    x = jnp.array([[1.0, 2.0]])
    err = lambda n: float(
        jnp.abs(
            jaxattr.integrated_gradients(
                fn, x, n_steps=n, method="riemann_middle", return_delta=True
            )[1]
        )[0]
    )
    # the midpoint rule is second order: 4x the steps, ~16x smaller error
    assert err(40) < err(10) / 10


def test_sensitivity_axiom():
    """Input and baseline differ in one feature and the outputs differ: it gets credit."""
    fn = lambda x: jax.nn.relu(x[:, 0] - 1.0)
    x = jnp.array([[3.0, 5.0]])
    b = jnp.array([[0.0, 5.0]])
    attr = jaxattr.integrated_gradients(fn, x, baselines=b)
    assert attr[0, 0] == pytest.approx(2.0, rel=0.05)  # a kink at 1/3 of the path
    assert attr[0, 1] == 0.0


def test_implementation_invariance():
    """Two networks computing the same function get the same attributions."""
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (3, 6))
    w2 = jax.random.normal(k2, (6, 2))
    perm = jnp.array([3, 0, 5, 1, 4, 2])
    f = lambda x: jnp.tanh(x @ w1) @ w2
    g = lambda x: jnp.tanh(x @ w1[:, perm]) @ w2[perm]  # hidden units permuted
    h = lambda x: (jnp.tanh(x @ (2 * w1)) @ w2 + jnp.tanh(x @ (2 * w1)) @ w2) / 2  # other graph
    x = jax.random.normal(jax.random.key(1), (4, 3))
    for method in (jaxattr.saliency, jaxattr.integrated_gradients):
        a = method(f, x, target=1)
        np.testing.assert_allclose(method(g, x, target=1), a, rtol=1e-5, atol=1e-6)
    a = jaxattr.integrated_gradients(lambda x: f(2 * x), x, target=0)
    np.testing.assert_allclose(
        jaxattr.integrated_gradients(h, x, target=0), a, rtol=1e-5, atol=1e-6
    )


def test_gradient_shap_expectation_is_ig_average():
    """With stdevs=0, GradientSHAP's expectation over alpha is IG from each baseline."""
    fn = lambda x: (x**2).sum(1)  # gradient 2(b + a(x - b)); E_a = x + b
    x = jnp.array([[1.0, 2.0]])
    dist = jnp.array([[0.0, 0.0], [1.0, -1.0]])
    attr = jaxattr.gradient_shap(fn, x, baselines=dist, key=jax.random.key(0), n_samples=4000)
    expected = ((x - dist) * (x + dist)).mean(0)  # closed form, average over baselines
    np.testing.assert_allclose(attr[0], expected, atol=0.05)


def test_smoothgrad_of_quadratic_is_unbiased():
    fn = lambda x: (x**2).sum(1)  # gradient 2x + 2 eps, E = 2x
    x = jnp.array([[1.0, -1.0, 0.5, 3.0]])
    attr = jaxattr.smoothgrad(fn, x, key=jax.random.key(0), n_iter=4000, noise_level=0.1)
    np.testing.assert_allclose(attr, 2 * x, atol=0.05)


def test_vargrad_of_quadratic_has_known_variance():
    """Gradient 2(x + eps): its variance is 4 sigma^2."""
    fn = lambda x: (x**2).sum(1)
    x = jnp.ones((1, 3))
    tunnel = jaxattr.noise_tunnel(jaxattr.gradient, nt_type="vargrad", nt_samples=4000, stdevs=0.5)
    attr = tunnel(fn, x, key=jax.random.key(0))
    np.testing.assert_allclose(attr, jnp.full((1, 3), 4 * 0.25), rtol=0.1)
