"""Metrics: parity with captum.metrics on the same perturbations, analytic cases otherwise.

Captum's perturbation functions draw their own noise; here they replay the draws jaxattr
made from its key, rearranged from jaxattr's sample-major (S, N, ...) layout to Captum's
example-major ``repeat_interleave`` layout (N * S, ...).
"""

from __future__ import annotations

import captum.attr as ca
import captum.metrics as cm
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import jaxattr
from tests import twins
from tests.helpers import linear


def _mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    p = {k: jnp.asarray(v.detach().numpy()) for k, v in model.state_dict().items()}

    def fn(x):
        return linear(jnp.tanh(linear(x, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])

    return model, fn


@pytest.fixture(scope="module")
def mlp():
    model, fn = _mlp()
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    return model, fn, x


@pytest.fixture(scope="module")
def two_input():
    model = twins.TwoInput(1)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 3)).astype(np.float32))
    return model, twins.two_input_jax(model), x


def _captum_layout(a):
    """(S, N, ...) -> (N * S, ...) torch tensor, example-major."""
    a = np.asarray(a)
    return torch.from_numpy(np.ascontiguousarray(np.swapaxes(a, 0, 1)).reshape(-1, *a.shape[2:]))


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _torch(x):
    return tuple(map(twins.to_torch, x)) if isinstance(x, tuple) else twins.to_torch(x)


def _gaussian_perturb(key, x, baselines=None):
    leaves, treedef = jax.tree_util.tree_flatten(x)
    keys = jax.random.split(key, len(leaves))
    eps = [0.1 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=False)]
    if baselines is not None:  # perturb towards the baseline, as a binary-ish mask would
        eps = [
            e * (leaf - b)
            for e, leaf, b in zip(eps, leaves, jax.tree_util.tree_leaves(baselines), strict=False)
        ]
    pert = jax.tree_util.tree_unflatten(treedef, eps)
    return pert, jax.tree_util.tree_map(jnp.subtract, x, pert)


def _replay_infidelity(key, x, n, baselines=None):
    keys = jax.random.split(key, n)
    b = (
        None
        if baselines is None
        else jax.tree_util.tree_map(lambda bl, xl: jnp.broadcast_to(bl, xl.shape), baselines, x)
    )
    pert, xp = jax.vmap(lambda k: _gaussian_perturb(k, x, b))(keys)
    pert_t = tuple(_captum_layout(p) for p in _as_tuple(pert))
    xp_t = tuple(_captum_layout(p) for p in _as_tuple(xp))
    if not isinstance(x, tuple):
        pert_t, xp_t = pert_t[0], xp_t[0]

    def replay(inputs, baselines=None):
        return pert_t, xp_t

    return replay


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("target", [1, [0, 2, 1, 1]])
def test_infidelity_matches_captum(mlp, normalize, target):
    model, fn, x = mlp
    key, n = jax.random.key(0), 6
    attr = jaxattr.integrated_gradients(fn, x, target=target, n_steps=8)
    ref = cm.infidelity(
        model,
        _replay_infidelity(key, jnp.asarray(x), n),
        twins.to_torch(x),
        twins.to_torch(np.asarray(attr)),
        target=target,
        n_perturb_samples=n,
        normalize=normalize,
    )
    ours = jaxattr.infidelity(
        fn,
        _gaussian_perturb,
        x,
        attr,
        target=target,
        n_perturb_samples=n,
        normalize=normalize,
        key=key,
    )
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-4, atol=1e-7)
    if normalize:
        return
    chunked = jaxattr.infidelity(
        fn,
        _gaussian_perturb,
        x,
        attr,
        target=target,
        n_perturb_samples=n,
        normalize=normalize,
        key=key,
        batch_size=4,
    )
    np.testing.assert_allclose(chunked, ours, rtol=1e-5, atol=1e-8)


def test_infidelity_tuple_inputs_with_baselines_matches_captum(two_input):
    model, fn, x = two_input
    key, n = jax.random.key(1), 5
    base = (np.full((1, 4), 0.5, np.float32), 0.25)
    attr = jaxattr.saliency(fn, x, target=2, abs=False)
    xj = tuple(map(jnp.asarray, x))
    ref = cm.infidelity(
        model,
        _replay_infidelity(key, xj, n, (jnp.asarray(base[0]), jnp.float32(0.25))),
        _torch(x),
        tuple(twins.to_torch(np.asarray(a)) for a in attr),
        baselines=(twins.to_torch(base[0]), 0.25),
        target=2,
        n_perturb_samples=n,
    )
    ours = jaxattr.infidelity(
        fn, _gaussian_perturb, x, attr, baselines=base, target=2, n_perturb_samples=n, key=key
    )
    np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-4, atol=1e-7)


def test_infidelity_of_exact_linear_attribution_is_zero():
    w = jnp.array([1.0, -2.0, 3.0])
    fn = lambda x: (x @ w)[:, None]  # noqa: E731
    x = jnp.ones((2, 3))
    out = jaxattr.infidelity(
        fn, _gaussian_perturb, x, jnp.broadcast_to(w, x.shape), target=0, key=jax.random.key(0)
    )
    np.testing.assert_allclose(out, 0.0, atol=1e-10)


def test_infidelity_errors(mlp):
    _, fn, x = mlp
    attr = np.zeros_like(x)
    with pytest.raises(ValueError, match="key=jax.random.key"):
        jaxattr.infidelity(fn, _gaussian_perturb, x, attr, target=0)
    with pytest.raises(ValueError, match="attributions must have the shape"):
        jaxattr.infidelity(fn, _gaussian_perturb, x, attr[:, :3], target=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"perturb_func must return \(perturbation"):
        jaxattr.infidelity(fn, lambda k, x: x, x, attr, target=0, key=jax.random.key(0))


def _uniform_replay(key, x, n, radius):
    keys = jax.random.split(jax.random.split(key)[0], n)
    xp = jax.vmap(lambda k: jaxattr.uniform_perturb(k, x, radius))(keys)
    xp_t = tuple(_captum_layout(p) for p in _as_tuple(xp))

    def replay(inputs, perturb_radius):
        return xp_t if isinstance(x, tuple) else xp_t[0]

    return replay


@pytest.mark.parametrize("norm_ord", ["fro", 1, float("inf")])
def test_sensitivity_max_saliency_matches_captum(mlp, norm_ord):
    model, fn, x = mlp
    key, n, r = jax.random.key(2), 5, 0.2
    ref = cm.sensitivity_max(
        ca.Saliency(model).attribute,
        twins.to_torch(x),
        perturb_func=_uniform_replay(key, jnp.asarray(x), n, r),
        perturb_radius=r,
        n_perturb_samples=n,
        norm_ord=norm_ord,
        target=[0, 1, 2, 0],
    )
    # a two-parameter perturb_func gets no radius: the same draws here
    two = lambda k, x: jaxattr.uniform_perturb(k, x, r)  # noqa: E731
    ours = jaxattr.sensitivity_max(
        jaxattr.saliency,
        fn,
        x,
        perturb_func=jaxattr.uniform_perturb if norm_ord == "fro" else two,
        perturb_radius=r,
        n_perturb_samples=n,
        norm_ord=norm_ord,
        key=key,
        target=[0, 1, 2, 0],
    )
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-4, atol=1e-6)


def test_sensitivity_max_integrated_gradients_tuple_matches_captum(two_input):
    model, fn, x = two_input
    key, n, r = jax.random.key(3), 4, 0.1
    xj = tuple(map(jnp.asarray, x))
    ref = cm.sensitivity_max(
        ca.IntegratedGradients(model).attribute,
        _torch(x),
        perturb_func=_uniform_replay(key, xj, n, r),
        perturb_radius=r,
        n_perturb_samples=n,
        target=3,
        n_steps=10,
    )
    ours = jaxattr.sensitivity_max(
        jaxattr.integrated_gradients,
        fn,
        x,
        perturb_radius=r,
        n_perturb_samples=n,
        key=key,
        target=3,
        n_steps=10,
    )
    np.testing.assert_allclose(ours, ref.numpy(), rtol=5e-4, atol=1e-6)


def test_sensitivity_max_random_method_and_errors(mlp):
    _, fn, x = mlp
    sg = jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=2, stdevs=0.1)
    out = jaxattr.sensitivity_max(sg, fn, x, n_perturb_samples=2, key=jax.random.key(0), target=1)
    assert out.shape == (4,) and bool(jnp.all(out > 0))
    with pytest.raises(ValueError, match="norm_ord must be"):
        jaxattr.sensitivity_max(jaxattr.saliency, fn, x, norm_ord="nuc", key=jax.random.key(0))
    with pytest.raises(ValueError, match="key=jax.random.key"):
        jaxattr.sensitivity_max(sg, fn, x, target=1)


def _linear(w):
    return lambda x: (x.reshape(x.shape[0], -1) @ w.reshape(-1))[:, None]


def test_deletion_and_insertion_curves_on_a_linear_model():
    w = jnp.array([1.0, 4.0, 2.0, 3.0])
    fn = _linear(w)
    x = jnp.ones((1, 4))
    attr = w[None] * x
    d = jaxattr.deletion_curve(fn, x, attr, target=0, n_steps=4)
    np.testing.assert_allclose(d.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(d.scores, [[10, 6, 3, 1, 0]])
    np.testing.assert_allclose(d.auc, [np.trapezoid([10, 6, 3, 1, 0], d.fractions)])
    i = jaxattr.insertion_curve(fn, x, attr, target=0, n_steps=4, substrate="baseline")
    np.testing.assert_allclose(i.scores, [[0, 4, 7, 9, 10]])
    # the exact attribution beats its reverse on both curves
    bad = jaxattr.deletion_curve(fn, x, -attr, target=0, n_steps=4)
    assert float(d.auc[0]) < float(bad.auc[0])
    # deletion to a baseline of 1 changes nothing; two steps round to 0, 2, 4 features
    np.testing.assert_allclose(
        jaxattr.deletion_curve(fn, x, attr, target=0, n_steps=2, baselines=1.0).scores,
        [[10, 10, 10]],
    )
    np.testing.assert_allclose(
        jaxattr.deletion_curve(fn, x, attr, target=0, n_steps=2).scores, [[10, 3, 0]]
    )


def test_curves_order_whole_pixels_and_chunk():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(2, 3, 4, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32)
    fn = _linear(w)
    attr = (w[None] * x).sum(1, keepdims=True)  # (N, 1, H, W): pixels
    full = jaxattr.deletion_curve(fn, x, attr, target=0, n_steps=16)
    # pixel by pixel, the drop equals the deleted pixel's channel sum of w * x
    contrib = np.sort(np.asarray(attr).reshape(2, -1), axis=1)[:, ::-1]
    expected = (
        float(0)
        + np.asarray(fn(x))[:, :1]
        - np.concatenate([np.zeros((2, 1)), np.cumsum(contrib, axis=1)], axis=1)
    )
    np.testing.assert_allclose(full.scores, expected, rtol=1e-5, atol=1e-5)
    chunked = jaxattr.deletion_curve(fn, x, attr, target=0, n_steps=16, batch_size=5)
    np.testing.assert_allclose(chunked.scores, full.scores, rtol=1e-6)
    blur = jaxattr.insertion_curve(fn, x, attr, target=0, n_steps=4, blur_sigma=1.0)
    assert blur.scores.shape == (2, 5)
    np.testing.assert_allclose(blur.scores[:, -1], np.asarray(fn(x))[:, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="attributions must have x's shape"):
        jaxattr.deletion_curve(fn, x, attr[:, :, :2], target=0)
    with pytest.raises(TypeError, match="needs x to be one array"):
        jaxattr.deletion_curve(lambda a, b: a, (x, x), attr, target=0)


def test_blur_substrate_keeps_constant_interior():
    from jaxattr._metrics import _gaussian_blur

    x = jnp.ones((1, 1, 21, 21))
    b = _gaussian_blur(x, 2.0, (2, 3))
    np.testing.assert_allclose(b[0, 0, 10, 10], 1.0, rtol=1e-5)
    assert float(b[0, 0, 0, 0]) < 1.0  # zero padding at the border, as RISE


def _torchray_pointing(attr, mask, tolerance):
    """TorchRay's PointingGame.evaluate for one 2-D map, with the argmax as the point."""
    y, x = np.unravel_index(np.argmax(attr), attr.shape)
    v, u = np.meshgrid(
        (np.arange(mask.shape[0]) - y) ** 2, (np.arange(mask.shape[1]) - x) ** 2, indexing="ij"
    )
    return bool((mask & ((v + u) < tolerance**2)).any())


def test_pointing_game_analytic_and_torchray():
    attr = np.zeros((1, 5, 5))
    attr[0, 2, 2] = 1.0
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 2, 4] = True  # distance 2 from the maximum
    assert not jaxattr.pointing_game(attr, mask)[0]
    assert not jaxattr.pointing_game(attr, mask, tolerance=2)[0]  # strict, as TorchRay
    assert jaxattr.pointing_game(attr, mask, tolerance=2.01)[0]
    mask[0, 2, 2] = True
    assert jaxattr.pointing_game(attr, mask)[0]
    ties = np.ones((1, 3, 3))
    first = np.zeros((1, 3, 3), bool)
    first[0, 0, 0] = True
    assert jaxattr.pointing_game(ties, first)[0]
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 9, 11))
    m = rng.uniform(size=(20, 9, 11)) < 0.05
    for tol in (1.5, 3, 6):
        ref = [_torchray_pointing(a[i], m[i], tol) for i in range(20)]
        np.testing.assert_array_equal(jaxattr.pointing_game(a, m, tolerance=tol), ref)
    with pytest.raises(ValueError, match="masks must have the shape"):
        jaxattr.pointing_game(a, m[:, :3])


def test_completeness():
    fn = lambda x: (x**2).sum(1)  # noqa: E731
    x = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    gap = jaxattr.completeness(fn, x, jaxattr.input_x_gradient(fn, x))
    np.testing.assert_allclose(gap, (x**2).sum(1), rtol=1e-6)  # 2x^2 attributed, x^2 gained
    attr, delta = jaxattr.integrated_gradients(fn, x, baselines=0.5, return_delta=True)
    np.testing.assert_allclose(jaxattr.completeness(fn, x, attr, baselines=0.5), delta, atol=1e-6)
    with pytest.raises(ValueError, match="attributions must have the shape"):
        jaxattr.completeness(fn, x, x[:, :1])
