"""Properties of the perturbation methods: axioms, known answers, slow references, errors.

Parity with Captum/Zennit on the same weights is in ``test_parity_captum_perturbation.py``; the
contract checks (shapes, jit, vmap, chunking, targets) are in ``test_contract.py``.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr

W = jax.random.normal(jax.random.key(0), (6, 3))


def mlp(x):
    return jnp.tanh(x @ W) * 2.0


def mlp2(a, b):
    return jnp.tanh(jnp.concatenate([a, b], 1) @ W)


X = jax.random.normal(jax.random.key(1), (2, 6))
X2 = (X[:, :4], X[:, 4:])


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ---- Shapley efficiency -------------------------------------------------------------


def test_shapley_sampling_efficiency():
    base = jnp.full((1, 6), 0.3)
    attr = jaxattr.shapley_value_sampling(
        mlp, X, key=jax.random.key(0), target=1, baselines=base, n_samples=5
    )
    diff = mlp(X)[:, 1] - mlp(jnp.broadcast_to(base, X.shape))[:, 1]
    close(attr.sum(1), diff)


def test_shapley_exact_efficiency_and_symmetry():
    attr = jaxattr.shapley_values(mlp2, X2, target=0, baselines=(0.1, -0.2))
    total = attr[0].sum(1) + attr[1].sum(1)
    b = (jnp.full_like(X2[0], 0.1), jnp.full_like(X2[1], -0.2))
    close(total, mlp2(*X2)[:, 0] - mlp2(*b)[:, 0])
    # a symmetric function gives symmetric features equal values
    sym = lambda x: (x[:, 0] * x[:, 1] + x[:, 2])[:, None]  # noqa: E731
    a = jaxattr.shapley_values(sym, jnp.array([[2.0, 2.0, 5.0]]), target=0)
    close(a[0, 0], a[0, 1])
    close(a[0, 2], 5.0)


def test_shapley_exact_matches_permutation_average():
    """Exact Shapley equals sampling averaged over every one of the F! orders."""
    fm = np.array([[0, 0, 1, 1, 2, 3]])
    exact = jaxattr.shapley_values(mlp, X, target=2, feature_mask=fm)
    perms = np.array(list(itertools.permutations(range(4))))
    from jaxattr import _ablation as AB
    from jaxattr import _perturbation as PB
    from jaxattr import _shapley as SH

    x, args, inputs, t, _ = PB._prepare(mlp, X, 2, ())
    b = jax.tree_util.tree_map(lambda a: np.float32(0.0), x)
    fmasks, _ = AB._feature_masks(fm, x, inputs)
    every = SH._shapley_from_orders(
        mlp, x, args, inputs, t, b, fmasks, jnp.asarray(perms), None, False
    )
    close(exact, every)


def test_shapley_values_limit():
    x = jnp.ones((1, jaxattr.MAX_EXACT_SHAPLEY_FEATURES + 1))
    with pytest.raises(ValueError, match=r"F=17 features exceeds the limit of 16"):
        jaxattr.shapley_values(lambda a: a.sum(1), x)


# ---- occlusion ---------------------------------------------------------------------


def test_occlusion_linear_model_known_answer():
    """For f = sum(w * x) with stride = window, each element gets its window's sum."""
    w = jnp.arange(12.0).reshape(1, 3, 4)
    fn = lambda a: (a * w).sum((1, 2))  # noqa: E731
    x = jnp.ones((1, 3, 4))
    attr = jaxattr.occlusion(fn, x, sliding_window_shapes=(1, 2), strides=(1, 2))
    expected = (w[0].reshape(3, 2, 2).sum(-1)).repeat(2, axis=1)
    close(attr[0], expected)


def test_occlusion_zennit_spelling_in_captum_mode():
    a = jaxattr.occlusion(mlp, X, window=3, stride=1, target=0)
    b = jaxattr.occlusion(mlp, X, sliding_window_shapes=(3,), strides=1, target=0)
    close(a, b)


def test_occlusion_zennit_noise_fill_uses_key():
    fill = lambda a, k: a * jax.random.normal(k, a.shape) * 0.2  # noqa: E731
    occl = partial(jaxattr.occlude_independent, fill_fn=fill)
    a = jaxattr.occlusion(mlp, X, window=2, occlusion_fn=occl, target=0, key=jax.random.key(0))
    b = jaxattr.occlusion(mlp, X, window=2, occlusion_fn=occl, target=0, key=jax.random.key(0))
    c = jaxattr.occlusion(mlp, X, window=2, occlusion_fn=occl, target=0, key=jax.random.key(1))
    close(a, b)
    assert not np.allclose(a, c)


def test_occlusion_errors():
    with pytest.raises(ValueError, match="exactly one window"):
        jaxattr.occlusion(mlp, X, target=0)
    with pytest.raises(ValueError, match="exactly one window"):
        jaxattr.occlusion(mlp, X, target=0, window=2, sliding_window_shapes=(2,))
    with pytest.raises(ValueError, match=r"cannot exceed the input dimensions \(6,\)"):
        jaxattr.occlusion(mlp, X, target=0, sliding_window_shapes=(7,))
    with pytest.raises(ValueError, match="cannot be larger than sliding_window_shapes"):
        jaxattr.occlusion(mlp, X, target=0, sliding_window_shapes=(2,), strides=3)
    with pytest.raises(ValueError, match="expected 1 values for shape"):
        jaxattr.occlusion(mlp, X, target=0, sliding_window_shapes=(2, 2))
    with pytest.raises(TypeError, match="occlusion_fn must be callable"):
        jaxattr.occlusion(mlp, X, target=0, window=2, occlusion_fn=3)


# ---- tiled occlusion ----------------------------------------------------------------


def test_tiled_occlusion_k1_is_occlusion():
    x = jax.random.normal(jax.random.key(4), (2, 3, 8, 8))
    fn = lambda a: jnp.tanh(a.mean((2, 3)))  # noqa: E731
    a = jaxattr.tiled_occlusion(
        fn, x, target=1, k=1, window=(3, 4, 4), baselines=0.5, show_progress=False
    )
    b = jaxattr.occlusion(
        fn, x, target=1, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), baselines=0.5
    )
    close(a, b)


def test_tiled_occlusion_4d_and_errors():
    x = jnp.ones((1, 2, 4, 4, 4))
    fn = lambda a: a.sum((1, 2, 3, 4))  # noqa: E731  (N,) output: target=None
    out = jaxattr.tiled_occlusion(fn, x, k=2, window=2, target=None, show_progress=False)
    assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"window must be divisible by k.*window=\(3, 3, 3, 3\)"):
        jaxattr.tiled_occlusion(fn, x, k=2, window=3, target=None)
    with pytest.raises(ValueError, match="1 to 4 non-batch dimensions"):
        jaxattr.tiled_occlusion(
            lambda a: a.sum((1, 2, 3, 4, 5)), jnp.ones((1,) * 6), k=1, window=1, target=None
        )
    with pytest.raises(ValueError, match=r"larger than the shifted tiling \(2,\)"):
        jaxattr.tiled_occlusion(lambda a: a.sum(1), jnp.ones((1, 4)), k=4, window=4, target=None)


# ---- feature masks, ablation, permutation -------------------------------------------


def test_feature_mask_errors():
    with pytest.raises(ValueError, match=r"feature_mask has shape \(5,\)"):
        jaxattr.feature_ablation(mlp, X, target=0, feature_mask=np.zeros(5, int))
    with pytest.raises(TypeError, match="integer feature ids"):
        jaxattr.feature_ablation(mlp, X, target=0, feature_mask=np.zeros(6))
    # N=1: nothing to shuffle, every feature skipped with 0 (Captum)
    one = jaxattr.feature_permutation(mlp, X[:1], key=jax.random.key(0), target=0)
    np.testing.assert_array_equal(one, np.zeros((1, 6)))


def test_feature_ablation_non_consecutive_ids_and_per_example_masks():
    fm = np.array([[5, 5, 9, 9, 2, 2], [0, 1, 2, 3, 4, 5]])
    a = jaxattr.feature_ablation(mlp, X, target=1, feature_mask=fm)
    for n in range(2):
        for fid in np.unique(fm[n]):
            sel = fm[n] == fid
            xa = X[n : n + 1].at[0, sel].set(0.0)
            close(a[n, sel], mlp(X[n : n + 1])[0, 1] - mlp(xa)[0, 1])


# ---- surrogates ---------------------------------------------------------------------


def test_fit_linear_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, (30, 5)).astype(np.float32)
    y = rng.normal(size=30).astype(np.float32)
    w = rng.uniform(0.1, 2, 30).astype(np.float32)
    coef, b = jaxattr.fit_linear(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w))
    design = np.concatenate([z, np.ones((30, 1))], 1) * np.sqrt(w)[:, None]
    ref = np.linalg.lstsq(design, y * np.sqrt(w), rcond=None)[0]
    close(coef, ref[:5], tol=1e-4)
    close(b, ref[5], tol=1e-4)


def test_fit_lasso_satisfies_optimality():
    """KKT conditions of sklearn's weighted Lasso objective at the JAX solution."""
    rng = np.random.default_rng(1)
    z = rng.integers(0, 2, (40, 8)).astype(np.float32)
    y = z @ np.array([1.0, -0.5, 0.0, 0.02, 0, 0, 2.0, 0]) + rng.normal(size=40) * 0.1
    w = rng.uniform(0.1, 2, 40).astype(np.float32)
    alpha = 0.05
    coef, b = jaxattr.fit_lasso(
        jnp.asarray(z), jnp.asarray(y, jnp.float32), jnp.asarray(w), alpha=alpha
    )
    coef, b = np.asarray(coef, np.float64), float(b)
    p = w / w.sum()
    grad = -(p * (y - b - z @ coef)) @ z  # gradient of the smooth part
    assert abs((p * (y - b - z @ coef)).sum()) < 1e-5  # intercept optimal
    nz = np.abs(coef) > 1e-7
    np.testing.assert_allclose(grad[nz], -alpha * np.sign(coef[nz]), atol=2e-5)
    assert (np.abs(grad[~nz]) <= alpha + 2e-5).all()
    assert nz.sum() < 8  # the L1 penalty zeroes some coefficients


def test_kernel_shap_exact_on_linear_model():
    w = jnp.array([1.0, -2.0, 0.5, 3.0])
    fn = lambda a: (a @ w)[:, None]  # noqa: E731
    x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    attr = jaxattr.kernel_shap(fn, x, key=jax.random.key(0), target=0, baselines=1.0, n_samples=40)
    close(attr, (x - 1.0) * w[None], tol=1e-3)


def test_lime_lasso_recovers_linear_model():
    w = jnp.array([1.0, -2.0, 0.5, 3.0])
    fn = lambda a: (a @ w)[:, None]  # noqa: E731
    x = jnp.ones((1, 4))
    attr = jaxattr.lime(fn, x, key=jax.random.key(1), target=0, n_samples=200, alpha=0.001)
    np.testing.assert_allclose(np.asarray(attr)[0], np.asarray(w), atol=0.05)
    with pytest.raises(ValueError, match="interpretable_model must be one of"):
        jaxattr.lime(fn, x, key=jax.random.key(1), target=0, interpretable_model="tree")


# ---- RISE and extremal perturbation recover a known region ---------------------------

REGION = (slice(None), slice(None), slice(4, 10), slice(6, 12))


def _region_model(x):
    """Responds only to the mean of channel 0 inside REGION."""
    return 4.0 * x[:, 0, 4:10, 6:12].mean((1, 2))[:, None] - 2.0


def _inside_outside(sal):
    sal = np.asarray(sal)[0, 0]
    inside = np.zeros(sal.shape, bool)
    inside[4:10, 6:12] = True
    return sal[inside].mean(), sal[~inside].mean()


def test_rise_recovers_region():
    x = jnp.ones((1, 2, 16, 16))
    sal = jaxattr.rise(
        _region_model,
        x,
        key=jax.random.key(0),
        target=0,
        num_masks=512,
        num_cells=4,
        batch_size=128,
    )
    assert sal.shape == x.shape
    close(sal[:, 0], sal[:, 1])  # shared over channels
    inside, outside = _inside_outside(sal)
    assert inside > outside + 0.02


@pytest.mark.parametrize(
    "variant,perturbation", [("preserve", "fade"), ("delete", "blur"), ("dual", "fade")]
)
def test_extremal_perturbation_recovers_region(variant, perturbation):
    x = jnp.ones((1, 1, 16, 16))
    fn = lambda a: 25.0 * _region_model(a)  # noqa: E731
    mask = jaxattr.extremal_perturbation(
        fn,
        x,
        target=0,
        areas=0.15,
        max_iter=150,
        step=2,
        sigma=4.0,
        variant=variant,
        perturbation=perturbation,
        max_blur=4.0,
    )
    assert mask.shape == x.shape
    inside, outside = _inside_outside(mask)
    assert inside > outside + 0.2, (inside, outside)


def test_extremal_perturbation_several_areas_and_errors():
    x = jnp.ones((2, 1, 8, 8))
    masks = jaxattr.extremal_perturbation(_region_model, x, target=0, areas=[0.1, 0.3], max_iter=2)
    assert masks.shape == (2, *x.shape)
    with pytest.raises(ValueError, match="variant must be one of"):
        jaxattr.extremal_perturbation(_region_model, x, target=0, variant="both")
    with pytest.raises(ValueError, match=r"areas must be fractions in \(0, 1\]"):
        jaxattr.extremal_perturbation(_region_model, x, target=0, areas=[1.5])


# ---- FusionGrad ----------------------------------------------------------------------


def test_fusion_grad_is_the_mean_over_its_draws():
    params = {"w": W, "s": jnp.array(1.5)}
    model = lambda p, a: jnp.tanh(a @ p["w"]) * p["s"]  # noqa: E731
    key = jax.random.key(3)
    fg = jaxattr.fusion_grad(
        jaxattr.saliency,
        n=3,
        m=2,
        std=0.1,
        mean=1.0,
        additive_noise=False,
        sg_std=0.2,
        sg_additive_noise=True,
        batch_size=4,
    )
    ours = fg(model, params, X, key=key, target=1)
    k_draw, _ = jax.random.split(key)
    pn, xn = jaxattr.fusion_grad_draws(
        k_draw, params, X, mean=1.0, std=0.1, n=3, sg_mean=0.0, sg_std=0.2, m=2
    )
    total = 0.0
    for i in range(3):
        p = jax.tree_util.tree_map(lambda a, z, i=i: a * z[i], params, pn)
        for j in range(2):
            total = total + jaxattr.saliency(partial(model, p), X + xn[i, j], target=1)
    close(ours, total / 6, tol=1e-5)


def test_noise_grad_without_noise_is_the_method():
    params = {"w": W}
    model = lambda p, a: jnp.tanh(a @ p["w"])  # noqa: E731
    fg = jaxattr.fusion_grad(
        jaxattr.integrated_gradients, n=2, m=1, std=0.0, sg_std=0.0, sg_additive_noise=True
    )
    close(
        fg(model, params, X, key=jax.random.key(0), target=2, n_steps=8),
        jaxattr.integrated_gradients(partial(model, params), X, target=2, n_steps=8),
    )


def test_show_progress_runs(capsys):
    jaxattr.feature_ablation(mlp, X, target=0, batch_size=2, show_progress=True)
    jaxattr.occlusion(
        mlp, X, target=0, sliding_window_shapes=(2,), batch_size=2, show_progress=True
    )


def test_second_call_does_not_recompile():
    traces = []

    def counted(x):
        traces.append(1)
        return mlp(x)

    calls = [
        lambda t, x: jaxattr.occlusion(counted, x, target=t, sliding_window_shapes=(2,)),
        lambda t, x: jaxattr.feature_ablation(counted, x, target=t, batch_size=4),
        lambda t, x: jaxattr.shapley_value_sampling(
            counted, x, target=t, n_samples=2, key=jax.random.key(0)
        ),
        lambda t, x: jaxattr.rise(counted, x, target=t, num_masks=4, key=jax.random.key(0)),
    ]
    for call in calls:
        traces.clear()
        call(1, X)
        first = len(traces)
        call(2, X)
        call(1, X + 1.0)
        assert len(traces) == first


def test_float64_inputs_are_scored_and_summed_in_float64():
    """With x64 enabled, float64 inputs give float64-exact attributions: the scores were
    cast to float32 (occlusion 1.8e-7 off a float64 brute force, Captum 5.9e-8; now
    ~1e-16), whatever the attribution's dtype said."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((12, 6)), rng.standard_normal((6, 3))
    x = rng.standard_normal((2, 4, 3))
    mask = np.arange(12).reshape(1, 4, 3) // 3  # four features of three elements
    with jax.enable_x64(True):

        def fn(v):
            return jnp.tanh(v.reshape(v.shape[0], -1) @ w1) @ w2

        def score(v):
            return np.asarray(fn(jnp.asarray(v)))[:, 1]

        # occlusion, window (4, 2), stride 2: windows at columns 0 and 2 (cut at the edge)
        acc, count = np.zeros_like(x), np.zeros(x.shape[1:])
        for j in (0, 2):
            xp = x.copy()
            xp[:, :, j : j + 2] = 0.0
            acc[:, :, j : j + 2] += (score(x) - score(xp))[:, None, None]
            count[:, j : j + 2] += 1
        occ = jaxattr.occlusion(fn, x, target=1, sliding_window_shapes=(4, 2), strides=2)
        # feature ablation and exact Shapley values over the four features
        value = {}
        for coalition in itertools.product([0, 1], repeat=4):
            keep = np.isin(mask, np.flatnonzero(coalition))
            value[coalition] = score(np.where(keep, x, 0.0))
        ablation = np.zeros_like(x)
        shapley = np.zeros_like(x)
        full = value[(1, 1, 1, 1)]
        for f in range(4):
            without = tuple(int(i != f) for i in range(4))
            ablation += np.where(mask == f, (full - value[without])[:, None, None], 0.0)
            phi = sum(
                np.prod(range(1, sum(c) + 1))
                * np.prod(range(1, 4 - sum(c)))
                / 24
                * (value[c[:f] + (1,) + c[f + 1 :]] - value[c])
                for c in value
                if c[f] == 0
            )
            shapley += np.where(mask == f, phi[:, None, None], 0.0)
        got = {
            "occlusion": (occ, acc / count),
            "feature_ablation": (
                jaxattr.feature_ablation(fn, x, target=1, feature_mask=mask),
                ablation,
            ),
            "shapley_values": (
                jaxattr.shapley_values(fn, x, target=1, feature_mask=mask),
                shapley,
            ),
        }
        for name, (ours, expected) in got.items():
            assert ours.dtype == jnp.float64, name
            err = float(np.abs(np.asarray(ours) - expected).max())
            assert err <= 1e-12 * float(np.abs(expected).max()), (name, err)
