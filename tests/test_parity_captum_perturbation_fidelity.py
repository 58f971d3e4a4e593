"""Fidelity of the perturbation family to the reference libraries' own code (issue #15).

Captum's classes run on the same weights as the JAX twins; extra-attributions'
``TiledOcclusion`` (not installable without its whole package) is re-stated independently
below from its published algorithm on top of Captum's own ``Occlusion``, and checked
against its analytic numbers. Tolerance: float32 on both sides (see ``assert_close``).
"""

from __future__ import annotations

import importlib.util
import itertools

import captum.attr as ca
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxattr
from tests import twins
from tests.helpers import Replay, assert_close, linear, samples_interleaved

#: Captum's Lime/KernelShap surrogates (and the host-object test) fit with scikit-learn,
#: a test oracle only (as Captum's own tests, these skip without it).
needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="Captum's surrogates need scikit-learn"
)


class SmallConv(torch.nn.Module):
    """(N, 2, H, W) -> (N, 3): a conv, tanh, mean pool and a linear layer."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.tanh(self.conv(x)).mean((2, 3)))


def small_conv_jax(model: SmallConv):
    p = {k: jnp.asarray(v.detach().numpy()) for k, v in model.state_dict().items()}

    def fn(x):
        h = jax.lax.conv_general_dilated(
            x,
            p["conv.weight"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        h = jnp.tanh(h + p["conv.bias"][None, :, None, None]).mean((2, 3))
        return linear(h, p["lin.weight"], p["lin.bias"])

    return fn


@pytest.fixture(scope="module")
def small():
    model = SmallConv(0).eval()
    return model, small_conv_jax(model)


# ---- 1. tiled occlusion = extra-attributions' TiledOcclusion --------------------------


def tiled_occlusion_reference(model, x, k, window, target=0, baselines=0.0):
    """extra-attributions' TiledOcclusion, re-stated from its algorithm (torch + Captum).

    For every tiling index ``j`` (one per dimension, ``0 <= j_d < k_d``) the model sees a
    shifted copy of the input: with ``s = window / k``, shifted position ``q`` holds
    input element ``q + s (j - 1)`` (zero where that falls before the input), and the
    copy has ``min(L, L - s (j - 1))`` elements (dimensions with ``k = 1`` unchanged).
    Captum's own ``Occlusion`` with ``strides = sliding_window_shapes = window`` explains
    each copy; its attributions are mapped back to the input's elements and summed.
    """
    x = np.asarray(x, np.float32)
    dims = x.shape[1:]
    steps = [w // kd if kd > 1 else 0 for w, kd in zip(window, k, strict=True)]
    occ = ca.Occlusion(model)
    total = None
    for j in itertools.product(*[range(kd) for kd in k]):
        offs = [s * (jd - 1) if kd > 1 else 0 for s, jd, kd in zip(steps, j, k, strict=True)]
        lens = [min(size, size - o) for size, o in zip(dims, offs, strict=True)]
        src = [np.arange(n) + o for n, o in zip(lens, offs, strict=True)]  # input index per q
        inside = [(i >= 0) & (i < size) for i, size in zip(src, dims, strict=True)]
        clipped = [np.clip(i, 0, size - 1) for i, size in zip(src, dims, strict=True)]
        shifted = x[np.ix_(np.arange(x.shape[0]), *clipped)]
        valid = np.ones(lens, bool)
        for d, m in enumerate(inside):
            shape = [1] * len(dims)
            shape[d] = -1
            valid = valid & m.reshape(shape)
        shifted = shifted * valid[None]
        attr = occ.attribute(
            torch.from_numpy(np.ascontiguousarray(shifted)),
            sliding_window_shapes=tuple(window),
            strides=tuple(window),
            target=target,
            baselines=baselines,
        ).numpy()
        back = np.zeros((attr.shape[0], *dims), np.float64)
        idx = np.ix_(np.arange(attr.shape[0]), *clipped)
        np.add.at(back, idx, attr * valid[None])
        total = back if total is None else total + back
    return total.astype(np.float32)


def test_tiled_occlusion_analytic_numbers():
    """The issue's example: all-ones input and weights, k=(1, 2, 2), window (1, 4, 4)."""
    x = np.ones((1, 1, 8, 8), np.float32)
    fn = lambda a: a.sum((1, 2, 3))[:, None]  # noqa: E731
    ours = np.asarray(
        jaxattr.tiled_occlusion(fn, x, k=(1, 2, 2), window=(1, 4, 4), show_progress=False)
    )[0, 0]
    # per axis: 2 tilings; the element's window in the shifted copy holds 4 ones, or 2
    # where the zero padding enters (j = 0, first 2 elements), or nothing (j = 0, last 2)
    per_axis = np.array([2 + 4, 2 + 4, 8, 8, 8, 8, 4, 4], np.float32)  # summed over j
    np.testing.assert_array_equal(ours, per_axis[:, None] * per_axis[None, :])
    assert ours[2:6, 2:6].min() == ours.max() == 64
    edges = np.concatenate(
        [ours[:2].ravel(), ours[6:].ravel(), ours[:, :2].ravel(), ours[:, 6:].ravel()]
    )
    assert edges.min() == 16 and edges.max() == 48  # the 16-48 at the edges


@pytest.mark.parametrize(
    "shape,k,window,target,baselines",
    [
        ((2, 2, 8, 8), (1, 2, 2), (2, 4, 4), 0, 0.0),
        ((1, 2, 7, 9), (2, 2, 3), (2, 4, 6), 1, 0.3),
        ((2, 2, 6, 10), (1, 3, 4), (1, 3, 4), [2, 0], 0.0),
    ],
)
def test_tiled_occlusion_matches_reference(small, shape, k, window, target, baselines):
    model, fn = small
    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    ref = tiled_occlusion_reference(model, x, k, window, target=target, baselines=baselines)
    ours = jaxattr.tiled_occlusion(
        fn, x, k=k, window=window, target=target, baselines=baselines, show_progress=False
    )
    assert_close(ours, ref)


def test_tiled_occlusion_defaults_are_the_reference_defaults():
    import inspect

    sig = inspect.signature(jaxattr.tiled_occlusion).parameters
    assert sig["target"].default == 0
    assert sig["show_progress"].default is True
    assert sig["k"].default == (1, 2, 2) and sig["window"].default == (3, 10, 10)
    assert sig["baselines"].default == 0


# ---- 2. FusionGrad perturbs parameters, not buffers -----------------------------------


def _params_probe(fn, x, *, args=(), target=None, key=None):
    """A 'method' that reports the params it is given: each BatchNorm statistic's sum and
    a weight's sum, as an x-shaped array (columns 0, 1, 2)."""
    p = args[-1]
    vals = jnp.stack([p["1.running_mean"].sum(), p["1.running_var"].sum(), p["0.weight"].sum()])
    return jnp.broadcast_to(vals, (x.shape[0], 3)).astype(x.dtype) + 0.0 * x[:, :3, 0, 0]


@pytest.fixture(scope="module")
def bn_model():
    from jaxattr.bridge import from_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 3, 3, padding=1),
        torch.nn.BatchNorm2d(3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 4 * 4, 2),
    )
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return from_torch(model.eval(), torch.randn(2, 3, 4, 4))


def test_fusion_grad_keeps_batchnorm_buffers(bn_model):
    conv = bn_model
    assert jaxattr._fusion.model_buffers(conv.fn) == {"1.running_mean", "1.running_var"}
    # a copy rebuilt from the pytree has no exported program: the layer roles tell
    copy = jax.tree_util.tree_map(lambda a: a, conv)
    assert not hasattr(copy, "exported")
    assert jaxattr._fusion.model_buffers(copy.fn) == {"1.running_mean", "1.running_var"}
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    fg = jaxattr.fusion_grad(_params_probe, n=4, m=1, std=0.5, sg_std=0.0, sg_additive_noise=True)
    out = np.asarray(fg(conv.fn, conv.params, x, key=jax.random.key(0)))
    p = conv.params
    np.testing.assert_allclose(out[0, 0], float(p["1.running_mean"].sum()), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], float(p["1.running_var"].sum()), rtol=1e-6)
    assert abs(out[0, 2] - float(p["0.weight"].sum())) > 1e-3  # parameters do get noise
    # a real method on the bridged model runs and differs from the noise-free one
    sal = jaxattr.fusion_grad(jaxattr.saliency, n=2, m=2, std=0.02, sg_additive_noise=True)
    attr = sal(conv.fn, conv.params, x, key=jax.random.key(1), target=1)
    assert attr.shape == x.shape and np.isfinite(np.asarray(attr)).all()


def test_fusion_grad_perturb_option():
    params = {"w": jnp.ones((2,)), "stat": jnp.ones((2,))}
    probe = lambda fn, x, *, args=(), **kw: jnp.broadcast_to(  # noqa: E731
        jnp.stack([args[-1]["w"].sum(), args[-1]["stat"].sum()]), x.shape
    )
    fg = jaxattr.fusion_grad(probe, n=3, m=1, std=0.5, sg_std=0.0, sg_additive_noise=True)
    model = lambda p, a: a  # noqa: E731
    x = jnp.ones((1, 2))
    every = np.asarray(fg(model, params, x, key=jax.random.key(0)))
    assert abs(every[0, 0] - 2) > 1e-3 and abs(every[0, 1] - 2) > 1e-3  # plain dict: all
    only_w = np.asarray(
        fg(model, params, x, key=jax.random.key(0), perturb=lambda name, leaf: name == "w")
    )
    assert only_w[0, 1] == 2.0 and abs(only_w[0, 0] - 2) > 1e-3
    tree = np.asarray(
        fg(model, params, x, key=jax.random.key(0), perturb={"w": False, "stat": True})
    )
    assert tree[0, 0] == 2.0
    with pytest.raises(ValueError, match="perturb must be"):
        fg(model, params, x, key=jax.random.key(0), perturb={"w": True})


# ---- shared small models ------------------------------------------------------------

W4 = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)


def lin_torch(x):
    return x.float() @ torch.from_numpy(W4)


def lin_jax(x):
    return x.astype(jnp.float32) @ jnp.asarray(W4)


X4 = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)
XI = np.array([[1, 2, 0, 3], [0, 1, 1, 0], [2, 0, 1, 1]], np.int64)


def _kernel_shap(monkeypatch, model, rows):
    """Captum's KernelShap drawing ``rows`` (one (F,) coalition per sample) in order."""

    shared = iter(rows)  # one generator per example: each continues where the last stopped

    def replay(self, original_inp, **kwargs):
        for row in shared:
            yield torch.from_numpy(np.asarray(row, np.int64)[None])

    monkeypatch.setattr(ca.KernelShap, "kernel_shap_perturb_generator", replay)
    return ca.KernelShap(model)


def _perm_replay(key, f, sizes_per_feature, leaf_of=None):
    """jaxattr.permute_feature's draws for features 0..f-1, in Captum's call order.

    ``sizes_per_feature[i]``: the batch size feature ``i`` is shuffled in (``None``:
    skipped, no draw); ``leaf_of[i]``: the index of its input (folded into its key).
    """
    perms = []
    for i, k in enumerate(jax.random.split(key, f)):
        n = sizes_per_feature[i]
        if n is None:  # skipped feature: Captum draws nothing
            continue
        leaf = 0 if leaf_of is None else leaf_of[i]
        p = np.asarray(jax.random.permutation(jax.random.fold_in(k, leaf), n))
        if (p == np.arange(n)).all():
            p = np.roll(np.arange(n), 1)
        perms.append(torch.from_numpy(p.astype(np.int64)))
    return perms


# ---- 3. int / bool inputs -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_int_and_bool_inputs_feature_ablation_and_occlusion(dtype):
    x = XI.astype(dtype)
    xt = torch.from_numpy(x)
    ref = ca.FeatureAblation(lin_torch).attribute(xt, target=1)
    ours = jaxattr.feature_ablation(lin_jax, x, target=1)
    assert ours.dtype == jnp.float32
    assert_close(ours, ref)
    ref = ca.Occlusion(lin_torch).attribute(xt, sliding_window_shapes=(2,), target=2)
    assert_close(jaxattr.occlusion(lin_jax, x, sliding_window_shapes=(2,), target=2), ref)


def test_int_inputs_shapley_and_permutation(monkeypatch):
    xt = torch.from_numpy(XI)
    key = jax.random.key(1)
    perms = np.asarray(jaxattr.shapley_permutations(key, 4, 3))
    monkeypatch.setattr(
        torch, "randperm", Replay([torch.from_numpy(p.astype(np.int64)) for p in perms])
    )
    ref = ca.ShapleyValueSampling(lin_torch).attribute(xt, target=0, n_samples=3)
    monkeypatch.undo()
    assert_close(jaxattr.shapley_value_sampling(lin_jax, XI, key=key, target=0, n_samples=3), ref)
    assert_close(
        jaxattr.shapley_values(lin_jax, XI, target=0),
        ca.ShapleyValues(lin_torch).attribute(xt, target=0),
    )
    monkeypatch.setattr(torch, "randperm", Replay(_perm_replay(key, 4, [3] * 4)))
    ref = ca.FeaturePermutation(lin_torch).attribute(xt, target=2)
    monkeypatch.undo()
    assert_close(jaxattr.feature_permutation(lin_jax, XI, key=key, target=2), ref)


@needs_sklearn
def test_int_inputs_lime_and_kernel_shap(monkeypatch):
    x = XI[:1]
    key = jax.random.key(2)
    z = np.asarray(jaxattr.lime_samples(key, 1, 4, 20)).astype(np.int64)[0]
    lime = ca.Lime(lin_torch, perturb_func=Replay([torch.from_numpy(r[None]) for r in z]))
    ref = lime.attribute(torch.from_numpy(x), target=1, n_samples=20)
    ours = jaxattr.lime(lin_jax, x, key=key, target=1, n_samples=20)
    assert_close(ours, ref, rtol=2e-3)
    zk = np.asarray(jaxattr.kernel_shap_samples(key, 1, 4, 20))[0]
    ref = _kernel_shap(monkeypatch, lin_torch, zk).attribute(
        torch.from_numpy(x), target=1, n_samples=20
    )
    assert_close(jaxattr.kernel_shap(lin_jax, x, key=key, target=1, n_samples=20), ref, rtol=2e-3)


# ---- 4. occlusion on (N,) inputs ----------------------------------------------------


def test_occlusion_on_rank_one_inputs():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    for fn_t, fn_j in (
        (lambda a: a * 2, lambda a: a * 2),
        (lambda a: (a * 2).sum(), lambda a: (a * 2).sum()),
    ):
        ref = ca.Occlusion(fn_t).attribute(
            torch.from_numpy(x), sliding_window_shapes=((),), baselines=0.5
        )
        for shapes in ((), ((),)):
            ours = jaxattr.occlusion(fn_j, x, sliding_window_shapes=shapes, baselines=0.5)
            assert_close(ours, ref)
    two = (x, np.ones((3, 2), np.float32))
    ref = ca.Occlusion(lambda a, b: a * 2 + b.sum(1)).attribute(
        tuple(map(torch.from_numpy, two)), sliding_window_shapes=((), (1,))
    )
    ours = jaxattr.occlusion(lambda a, b: a * 2 + b.sum(1), two, sliding_window_shapes=((), (1,)))
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])


# ---- 5. aggregate forwards (one scalar for the whole batch) ---------------------------


def agg_torch(x):
    return (torch.tanh(x @ torch.from_numpy(W4)) ** 2).sum()


def agg_jax(x):
    return (jnp.tanh(x @ jnp.asarray(W4)) ** 2).sum()


def test_aggregate_forward_ablation_occlusion_shapley(monkeypatch):
    xt = torch.from_numpy(X4)
    mask = np.array([[0, 0, 1, 2]])
    ref = ca.FeatureAblation(agg_torch).attribute(xt, feature_mask=torch.from_numpy(mask))
    ours = jaxattr.feature_ablation(agg_jax, X4, feature_mask=mask)
    assert ours.shape == (1, 4)
    assert_close(ours, ref)
    ref = ca.Occlusion(agg_torch).attribute(xt, sliding_window_shapes=(2,), baselines=0.3)
    assert_close(jaxattr.occlusion(agg_jax, X4, sliding_window_shapes=(2,), baselines=0.3), ref)
    key = jax.random.key(3)
    perms = np.asarray(jaxattr.shapley_permutations(key, 3, 4))
    monkeypatch.setattr(
        torch, "randperm", Replay([torch.from_numpy(p.astype(np.int64)) for p in perms])
    )
    ref = ca.ShapleyValueSampling(agg_torch).attribute(
        xt, feature_mask=torch.from_numpy(mask), n_samples=4
    )
    monkeypatch.undo()
    ours = jaxattr.shapley_value_sampling(agg_jax, X4, key=key, feature_mask=mask, n_samples=4)
    assert_close(ours, ref)
    ref = ca.ShapleyValues(agg_torch).attribute(xt, feature_mask=torch.from_numpy(mask))
    assert_close(jaxattr.shapley_values(agg_jax, X4, feature_mask=mask), ref)
    with pytest.raises(ValueError, match="one mask per example"):
        jaxattr.feature_ablation(agg_jax, X4, feature_mask=np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="no per-example dimension"):
        jaxattr.feature_ablation(agg_jax, X4, target=0)


@needs_sklearn
def test_aggregate_forward_permutation_lime_kernel_shap(monkeypatch):
    xt = torch.from_numpy(X4)
    key = jax.random.key(4)
    monkeypatch.setattr(torch, "randperm", Replay(_perm_replay(key, 4, [3] * 4)))
    ref = ca.FeaturePermutation(agg_torch).attribute(xt)
    monkeypatch.undo()
    ours = jaxattr.feature_permutation(agg_jax, X4, key=key)
    assert ours.shape == (1, 4)
    assert_close(ours, ref)
    z = np.asarray(jaxattr.lime_samples(key, 1, 4, 30)).astype(np.int64)[0]
    lime = ca.Lime(agg_torch, perturb_func=Replay([torch.from_numpy(r[None]) for r in z]))
    ref = lime.attribute(xt, n_samples=30)
    ours = jaxattr.lime(agg_jax, X4, key=key, n_samples=30)
    assert ours.shape == (1, 4)
    assert_close(ours, ref, rtol=2e-3)
    zk = np.asarray(jaxattr.kernel_shap_samples(key, 1, 4, 30))[0]
    ref = _kernel_shap(monkeypatch, agg_torch, zk).attribute(xt, n_samples=30)
    assert_close(jaxattr.kernel_shap(agg_jax, X4, key=key, n_samples=30), ref, rtol=2e-3)


# ---- 6. target=None on multi-output models; int target on (N, C, 1) ------------------


def test_target_none_attributes_every_output_element(monkeypatch):
    xt = torch.from_numpy(X4)
    ref = ca.FeatureAblation(lin_torch).attribute(xt)  # (N * C, 4)
    ours = jaxattr.feature_ablation(lin_jax, X4)
    assert ours.shape == (9, 4)
    assert_close(ours, ref)
    ref = ca.Occlusion(lin_torch).attribute(xt, sliding_window_shapes=(2,))
    assert_close(jaxattr.occlusion(lin_jax, X4, sliding_window_shapes=(2,)), ref)
    key = jax.random.key(5)
    monkeypatch.setattr(torch, "randperm", Replay(_perm_replay(key, 4, [3] * 4)))
    ref = ca.FeaturePermutation(lin_torch).attribute(xt)
    monkeypatch.undo()
    assert_close(jaxattr.feature_permutation(lin_jax, X4, key=key), ref)
    ref = ca.ShapleyValues(lin_torch).attribute(xt)  # (N, C, 4)
    ours = jaxattr.shapley_values(lin_jax, X4)
    assert ours.shape == (3, 3, 4)
    assert_close(ours, ref)
    with pytest.raises(ValueError, match="target=None needs one output per example"):
        jaxattr.lime(lin_jax, X4, key=key)


def test_int_target_on_trailing_singleton_output():
    fn_t = lambda a: lin_torch(a)[..., None]  # noqa: E731  (N, C, 1)
    fn_j = lambda a: lin_jax(a)[..., None]  # noqa: E731
    xt = torch.from_numpy(X4)
    ref = ca.FeatureAblation(fn_t).attribute(xt, target=1)
    assert_close(jaxattr.feature_ablation(fn_j, X4, target=1), ref)
    # a list of ints too (Captum asks for a 2-D output there): one int per example
    per = jaxattr.feature_ablation(fn_j, X4, target=[0, 2, 1])
    for i, t in enumerate([0, 2, 1]):
        assert_close(per[i], jaxattr.feature_ablation(fn_j, X4, target=t)[i])
    ref = ca.Occlusion(fn_t).attribute(xt, target=2, sliding_window_shapes=(3,))
    assert_close(jaxattr.occlusion(fn_j, X4, target=2, sliding_window_shapes=(3,)), ref)


# ---- 7. feature_permutation: N=1, empty inputs, different batch sizes ---------------


def test_feature_permutation_edge_batches(monkeypatch):
    key = jax.random.key(6)
    one = X4[:1]
    ref = ca.FeaturePermutation(lin_torch).attribute(torch.from_numpy(one), target=0)
    ours = jaxattr.feature_permutation(lin_jax, one, key=key, target=0)
    assert_close(ours, ref)
    np.testing.assert_array_equal(ours, 0.0)

    def f2_t(a, b):
        return (a @ torch.from_numpy(W4[:2])).sum() + (b @ torch.from_numpy(W4[2:])).pow(2).sum()

    def f2_j(a, b):
        return (a @ jnp.asarray(W4[:2])).sum() + ((b @ jnp.asarray(W4[2:])) ** 2).sum()

    # an empty input (batch 0) and a batch of 4: the empty one's features are skipped
    empty = (np.zeros((0, 2), np.float32), X4[:, 2:].repeat(2, 0)[:4])
    monkeypatch.setattr(
        torch, "randperm", Replay(_perm_replay(key, 4, [None, None, 4, 4], [0, 0, 1, 1]))
    )
    ref = ca.FeaturePermutation(f2_t).attribute(tuple(map(torch.from_numpy, empty)))
    monkeypatch.undo()
    ours = jaxattr.feature_permutation(f2_j, empty, key=key)
    assert ours[0].shape == (1, 2) and ours[1].shape == (1, 2)
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])
    # different batch sizes (3 and 5) in aggregate mode, each shuffled within its batch
    mixed = (X4[:, :2], np.random.default_rng(9).normal(size=(5, 2)).astype(np.float32))
    monkeypatch.setattr(torch, "randperm", Replay(_perm_replay(key, 4, [3, 3, 5, 5], [0, 0, 1, 1])))
    ref = ca.FeaturePermutation(f2_t).attribute(tuple(map(torch.from_numpy, mixed)))
    monkeypatch.undo()
    ours = jaxattr.feature_permutation(f2_j, mixed, key=key)
    # the first input enters through a sum over the batch: shuffling it changes nothing
    np.testing.assert_allclose(ours[0], twins.to_np(ref[0]), atol=1e-5)
    assert_close(ours[1], ref[1])
    with pytest.raises(ValueError, match="different batch sizes"):
        jaxattr.feature_permutation(lambda a, b: a @ jnp.ones((2, 1)), mixed, key=key, target=0)


# ---- 8. Lime / KernelShap options, LimeBase -----------------------------------------

from captum._utils.models.linear_model import (  # noqa: E402
    SGDLasso,
    SGDLinearRegression,
    SGDRidge,
    SkLearnLasso,
    SkLearnLinearRegression,
    SkLearnRidge,
)
from captum.attr._core.lime import get_exp_kernel_similarity_function  # noqa: E402

X6 = np.random.default_rng(10).normal(size=(2, 6)).astype(np.float32)
W6 = np.random.default_rng(11).normal(size=(6, 3)).astype(np.float32)
MASK6 = np.array([[0, 0, 1, 2, 2, 3]])


def tanh_torch(x):
    return torch.tanh(x @ torch.from_numpy(W6)) * 2.0


def tanh_jax(x):
    return jnp.tanh(x @ jnp.asarray(W6)) * 2.0


def _lime_rows(key, e, f, s):
    """jaxattr.lime_samples as Captum's per-example replay order (example-major)."""
    z = np.asarray(jaxattr.lime_samples(key, e, f, s)).astype(np.int64)
    return [torch.from_numpy(r[None]) for r in z.reshape(-1, f)]


@needs_sklearn
@pytest.mark.parametrize(
    "name,captum_model,tol",
    [
        ("lasso", SkLearnLasso(alpha=0.01), 2e-3),
        ("ridge", SkLearnRidge(alpha=1.0), 1e-4),
        ("linear", SkLearnLinearRegression(), 1e-3),
        ("sgd_lasso", SGDLasso(), 1e-3),
        ("sgd_ridge", SGDRidge(), 1e-3),
        ("sgd_linear", SGDLinearRegression(), 1e-3),
    ],
)
def test_lime_interpretable_models(name, captum_model, tol):
    key = jax.random.key(12)
    lime = ca.Lime(
        tanh_torch,
        interpretable_model=captum_model,
        perturb_func=Replay(_lime_rows(key, 2, 4, 40)),
    )
    ref = lime.attribute(
        torch.from_numpy(X6), target=[1, 2], feature_mask=torch.from_numpy(MASK6), n_samples=40
    )
    ours = jaxattr.lime(
        tanh_jax,
        X6,
        key=key,
        target=[1, 2],
        feature_mask=MASK6,
        n_samples=40,
        interpretable_model=name,
    )
    assert_close(ours, ref, rtol=tol)


@needs_sklearn
def test_lime_sklearn_object_and_jax_function_surrogates():
    from sklearn.linear_model import Ridge

    key = jax.random.key(13)
    lime = ca.Lime(
        tanh_torch,
        interpretable_model=SkLearnRidge(alpha=0.5),
        perturb_func=Replay(_lime_rows(key, 2, 4, 30)),
    )
    ref = lime.attribute(
        torch.from_numpy(X6), target=0, feature_mask=torch.from_numpy(MASK6), n_samples=30
    )
    kw = dict(key=key, target=0, feature_mask=MASK6, n_samples=30)
    assert_close(jaxattr.lime(tanh_jax, X6, interpretable_model=Ridge(alpha=0.5), **kw), ref)
    ridge = lambda z, y, w: jaxattr.fit_ridge(z, y, w, 0.5)[0]  # noqa: E731
    assert_close(jaxattr.lime(tanh_jax, X6, interpretable_model=ridge, **kw), ref)
    # the function form also runs under jit; the host object does not
    jitted = jax.jit(lambda a: jaxattr.lime(tanh_jax, a, interpretable_model=ridge, **kw))(X6)
    assert_close(jitted, ref)
    with pytest.raises(ValueError, match="fits on the host"):
        jax.jit(lambda a: jaxattr.lime(tanh_jax, a, interpretable_model=Ridge(), **kw))(X6)
    with pytest.raises(TypeError, match="interpretable_model must be one of"):
        jaxattr.lime(tanh_jax, X6, interpretable_model=3, **kw)


@needs_sklearn
@pytest.mark.parametrize("n", [1, 2])
def test_return_input_shape_false(n, monkeypatch):
    key = jax.random.key(14)
    x = X6[:n]
    lime = ca.Lime(tanh_torch, perturb_func=Replay(_lime_rows(key, n, 4, 30)))
    ref = lime.attribute(
        torch.from_numpy(x),
        target=1,
        feature_mask=torch.from_numpy(MASK6),
        n_samples=30,
        return_input_shape=False,
    )
    ours = jaxattr.lime(
        tanh_jax, x, key=key, target=1, feature_mask=MASK6, n_samples=30, return_input_shape=False
    )
    assert ours.shape == (n, 4)
    assert_close(ours, ref.reshape(n, 4), rtol=2e-3)
    zk = np.asarray(jaxattr.kernel_shap_samples(key, n, 4, 30))
    rows = [r for e in range(n) for r in zk[e]]
    ref = _kernel_shap(monkeypatch, tanh_torch, rows).attribute(
        torch.from_numpy(x),
        target=1,
        feature_mask=torch.from_numpy(MASK6),
        n_samples=30,
        return_input_shape=False,
    )
    ours = jaxattr.kernel_shap(
        tanh_jax, x, key=key, target=1, feature_mask=MASK6, n_samples=30, return_input_shape=False
    )
    assert_close(ours, ref.reshape(n, 4), rtol=2e-3)


@needs_sklearn
@pytest.mark.parametrize("width", [0.75, 3.0])
def test_lime_euclidean_kernel(width):
    key = jax.random.key(15)
    lime = ca.Lime(
        tanh_torch,
        interpretable_model=SkLearnLinearRegression(),
        similarity_func=get_exp_kernel_similarity_function("euclidean", width),
        perturb_func=Replay(_lime_rows(key, 2, 4, 30)),
    )
    ref = lime.attribute(
        torch.from_numpy(X6), target=2, feature_mask=torch.from_numpy(MASK6), n_samples=30
    )
    kw = dict(key=key, target=2, feature_mask=MASK6, n_samples=30, interpretable_model="linear")
    ours = jaxattr.lime(tanh_jax, X6, distance_mode="euclidean", kernel_width=width, **kw)
    assert_close(ours, ref, rtol=1e-3)
    sim = jaxattr.get_exp_kernel_similarity_function("euclidean", width)
    assert_close(jaxattr.lime(tanh_jax, X6, similarity_func=sim, **kw), ref, rtol=1e-3)


def _keys_draws(fn, key, s, e):
    """What jaxattr's perturb_func draws: sample s of surrogate e from split(key, (S, E))."""
    keys = jax.random.split(key, (s, e))
    return [[fn(keys[i, j]) for i in range(s)] for j in range(e)]


@needs_sklearn
def test_lime_custom_similarity_perturb_and_transform():
    key = jax.random.key(16)
    n_samples, n_feat = 30, 4

    def perturb_j(k, original_input, num_interp_features, **kw):
        return jax.random.bernoulli(k, 0.7, (1, num_interp_features)).astype(jnp.int32)

    def transform_j(z, original_input, feature_mask, baselines, **kw):
        on = z[0].astype(bool)[feature_mask]
        return jnp.where(on, original_input, 0.5 * original_input)

    def sim_j(original_input, perturbed_input, z, **kw):
        return jnp.exp(-jnp.sum(jnp.abs(original_input - perturbed_input)))

    def transform_t(z, original_input, feature_mask, baselines, **kw):
        on = z[0].bool()[feature_mask]
        return torch.where(on, original_input, 0.5 * original_input)

    def sim_t(original_input, perturbed_input, z, **kw):
        return torch.exp(-(original_input - perturbed_input).abs().sum())

    draws = _keys_draws(lambda k: perturb_j(k, None, n_feat), key, n_samples, 2)
    ref = []
    for e in range(2):  # Captum's LimeBase per example, with Lime's keywords
        base = ca.LimeBase(
            tanh_torch,
            SkLearnLinearRegression(),
            similarity_func=sim_t,
            perturb_func=Replay([torch.from_numpy(np.asarray(d)) for d in draws[e]]),
            perturb_interpretable_space=True,
            from_interp_rep_transform=transform_t,
            to_interp_rep_transform=None,
        )
        ref.append(
            base.attribute(
                torch.from_numpy(X6[e : e + 1]),
                target=1,
                n_samples=n_samples,
                feature_mask=torch.from_numpy(MASK6),
                baselines=0.0,
                num_interp_features=n_feat,
            ).reshape(-1)
        )
    ours = jaxattr.lime(
        tanh_jax,
        X6,
        key=key,
        target=1,
        feature_mask=MASK6,
        n_samples=n_samples,
        interpretable_model="linear",
        similarity_func=sim_j,
        perturb_func=perturb_j,
        from_interp_rep_transform=transform_j,
        return_input_shape=False,
    )
    assert_close(ours, torch.stack(ref), rtol=1e-3)


@needs_sklearn
@pytest.mark.parametrize("interp_space", [True, False])
def test_lime_base_matches_captum_limebase(interp_space):
    key = jax.random.key(17)
    n_samples = 40
    x = X6[:1]
    sel = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0]], np.float32)

    if interp_space:

        def perturb_j(k, original_input):
            return jax.random.bernoulli(k, 0.5, (1, 3)).astype(jnp.float32)

        draw = perturb_j
    else:

        def perturb_j(k, original_input):
            keep = jax.random.bernoulli(k, 0.5, (1, 3)).astype(jnp.float32)
            return original_input * (keep @ jnp.asarray(sel.T))

        draw = perturb_j

    def from_j(z, original_input):
        return original_input * (z @ jnp.asarray(sel.T))

    def to_j(xp, original_input):
        return (jnp.abs(xp) @ jnp.asarray(sel) > 0).astype(jnp.float32)

    def sim_j(original_input, perturbed_input, z):
        return 1.0 / (1.0 + jnp.sum(z))

    def from_t(z, original_input, **kw):
        return original_input * (z @ torch.from_numpy(sel.T))

    def to_t(xp, original_input, **kw):
        return ((xp.abs() @ torch.from_numpy(sel)) > 0).float()

    def sim_t(original_input, perturbed_input, z, **kw):
        return 1.0 / (1.0 + z.sum())

    draws = _keys_draws(lambda k: draw(k, jnp.asarray(x)), key, n_samples, 1)[0]
    base = ca.LimeBase(
        tanh_torch,
        SkLearnLinearRegression(),
        similarity_func=sim_t,
        perturb_func=Replay([torch.from_numpy(np.asarray(d)) for d in draws]),
        perturb_interpretable_space=interp_space,
        from_interp_rep_transform=from_t if interp_space else None,
        to_interp_rep_transform=None if interp_space else to_t,
    )
    ref = base.attribute(torch.from_numpy(x), target=0, n_samples=n_samples)
    ours = jaxattr.lime_base(
        tanh_jax,
        x,
        key=key,
        interpretable_model="linear",
        similarity_func=sim_j,
        perturb_func=perturb_j,
        perturb_interpretable_space=interp_space,
        from_interp_rep_transform=from_j if interp_space else None,
        to_interp_rep_transform=None if interp_space else to_j,
        target=0,
        n_samples=n_samples,
    )
    assert ours.shape == (1, 3)
    assert_close(ours, ref, rtol=1e-3)
    with pytest.raises(TypeError, match="needs similarity_func and perturb_func"):
        jaxattr.lime_base(tanh_jax, x, key=key, target=0)


# ---- 9. noise_tunnel around feature_ablation; draw_baseline_from_distrib -------------


@pytest.mark.parametrize("mask_kind", ["numpy", "jax"])
def test_noise_tunnel_feature_ablation_with_mask(mask_kind, monkeypatch):
    key = jax.random.key(18)
    k_noise, _, _ = jax.random.split(key, 3)
    noise = jaxattr.draw_noise(k_noise, X6, 0.2, 3)
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    ref = ca.NoiseTunnel(ca.FeatureAblation(tanh_torch)).attribute(
        torch.from_numpy(X6),
        nt_type="smoothgrad_sq",
        nt_samples=3,
        stdevs=0.2,
        target=1,
        feature_mask=torch.from_numpy(MASK6),
        baselines=0.1,
    )
    monkeypatch.undo()
    mask = MASK6 if mask_kind == "numpy" else jnp.asarray(MASK6)
    tunnel = jaxattr.noise_tunnel(
        jaxattr.feature_ablation, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.2
    )
    ours = tunnel(tanh_jax, X6, key=key, target=1, feature_mask=mask, baselines=0.1)
    assert_close(ours, ref)
    # and around the other mask-taking methods (the mask stays concrete inside)
    sv = jaxattr.noise_tunnel(jaxattr.shapley_values, nt_samples=2, stdevs=0.1)
    assert sv(tanh_jax, X6, key=key, target=0, feature_mask=mask).shape == X6.shape


@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_noise_tunnel_draw_baseline_from_distrib(nt_type, monkeypatch):
    key = jax.random.key(19)
    nt_samples, n = 4, X6.shape[0]
    dist = np.random.default_rng(20).normal(size=(5, 6)).astype(np.float32)
    k_noise, k_base, _ = jax.random.split(key, 3)
    noise = jaxattr.draw_noise(k_noise, X6, 0.1, nt_samples)
    idx = np.asarray(jax.random.randint(k_base, (nt_samples, n), 0, 5))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "choice", Replay([idx.T.reshape(-1)]))
    ref = ca.NoiseTunnel(ca.IntegratedGradients(tanh_torch)).attribute(
        torch.from_numpy(X6),
        nt_type=nt_type,
        nt_samples=nt_samples,
        stdevs=0.1,
        draw_baseline_from_distrib=True,
        baselines=torch.from_numpy(dist),
        target=2,
        n_steps=16,
    )
    monkeypatch.undo()
    tunnel = jaxattr.noise_tunnel(
        jaxattr.integrated_gradients,
        nt_type=nt_type,
        nt_samples=nt_samples,
        stdevs=0.1,
        draw_baseline_from_distrib=True,
    )
    ours = tunnel(tanh_jax, X6, key=key, baselines=dist, target=2, n_steps=16)
    assert_close(ours, ref, rtol=2e-4)


# ---- 10. progress bars reach their end before they are cleared -----------------------


def test_progress_bars_reach_the_end(capsys):
    jaxattr.feature_ablation(tanh_jax, X6, target=0, batch_size=2, show_progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "feature_ablation" in err  # 6 features in chunks of 2
    jaxattr.lime(tanh_jax, X6, key=jax.random.key(0), target=0, n_samples=50, batch_size=10,
                 show_progress=True)  # fmt: skip
    assert "5/5" in capsys.readouterr().err
    x = np.ones((1, 1, 8, 8), np.float32)
    jaxattr.tiled_occlusion(lambda a: a.sum((1, 2, 3))[:, None], x, window=(1, 4, 4))
    assert "4/4" in capsys.readouterr().err  # the default show_progress=True, 4 tilings
    from jaxattr._progress import progress

    seen = list(progress(range(500), desc="many"))
    assert seen == list(range(500)) and "500/500" in capsys.readouterr().err
