"""Fidelity of the perturbation family to the reference libraries' own code (issue #15).

Captum's classes run on the same weights as the JAX twins; extra-attributions'
``TiledOcclusion`` (not installable without its whole package) is re-stated independently
below from its published algorithm on top of Captum's own ``Occlusion``, and checked
against its analytic numbers. Tolerance: float32 on both sides (see ``assert_close``).
"""

from __future__ import annotations

import itertools

import captum.attr as ca
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxattr
from tests.test_parity_captum import assert_close


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
        return h @ p["lin.weight"].T + p["lin.bias"]

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
