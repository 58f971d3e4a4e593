"""Shared checks for the bridge tests: torch vs converted JAX model.

Tolerance: float32 everywhere; an element passes when
``|jax - torch| <= RTOL * |torch| + ATOL * max|torch|`` with RTOL = 1e-5 and ATOL = 1e-5
(the second term absorbs float32 rounding on near-zero entries; for a parameter whose
gradient is all rounding noise, such as a key bias under softmax, ``max|torch|`` is floored at
1e-3 x the largest parameter gradient of the model). Deep models accumulate
rounding in a different order on each side, so their checks pass a slightly larger ATOL
(stated at each call).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxattr import bridge  # noqa: E402

RTOL = 1e-5
ATOL = 1e-5


def assert_close(got, want, *, rtol=RTOL, atol=ATOL, what="", scale_floor=0.0):
    got = np.asarray(got, np.float64)
    want = np.asarray(want.detach().numpy() if isinstance(want, torch.Tensor) else want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != torch {want.shape}"
    # NaN/Inf must sit exactly where torch has them (a comparison with NaN is never "bad")
    nonfinite = ~np.isfinite(want)
    same = (np.isnan(got) & np.isnan(want)) | (got == want)
    assert (same | ~nonfinite).all() and np.isfinite(got[~nonfinite]).all(), (
        f"{what}: NaN/Inf differ from torch's: {int((~np.isfinite(got)).sum())} non-finite, "
        f"torch has {int(nonfinite.sum())}"
    )
    got, want = np.where(nonfinite, 0.0, got), np.where(nonfinite, 0.0, want)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, scale_floor)
    err = np.abs(got - want)
    tol = rtol * np.abs(want) + atol * scale
    bad = err > tol
    assert not bad.any(), (
        f"{what}: {int(bad.sum())}/{bad.size} elements off; max abs err {err.max():.3g}, "
        f"max |torch| {scale:.3g}, "
        f"worst relative {float((err / (np.abs(want) + 1e-30)).max()):.3g}"
    )


def _torch_tree(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        return {k: _torch_tree(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return tuple(_torch_tree(v) for v in out)
    return out


def _leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, torch.Tensor))


def check_model(
    model,
    inputs,
    kwargs=None,
    *,
    name="",
    rtol=RTOL,
    atol=ATOL,
    grad_atol=None,
    param_grads=True,
    convert_batch=2,
    vmap=True,
):
    """Convert ``model`` and compare outputs, input and param gradients with torch.

    ``inputs`` is a tuple of torch tensors (batch first); float inputs get gradients.
    Returns the Converted model.
    """
    kwargs = dict(kwargs or {})
    grad_atol = atol if grad_atol is None else grad_atol
    t0 = time.perf_counter()
    conv = bridge.from_torch(
        model,
        tuple(x[:convert_batch] for x in inputs),
        kwargs={k: v[:convert_batch] for k, v in kwargs.items()},
    )
    t_convert = time.perf_counter() - t0

    # ---- torch reference
    tin = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    model.zero_grad(set_to_none=True)
    tout = _torch_tree(model(*tin, **kwargs))
    tleaves = _leaves(tout)
    rng = np.random.default_rng(0)
    cots = [rng.standard_normal(t.shape).astype(np.float32) for t in tleaves]
    loss = sum(
        (t * torch.from_numpy(c)).sum()
        for t, c in zip(tleaves, cots, strict=False)
        if t.is_floating_point()
    )
    loss.backward()

    # ---- jax
    jin = [
        jnp.asarray(x.numpy())
        if x.dtype != torch.int64
        else jnp.asarray(x.numpy().astype(np.int32))
        for x in inputs
    ]
    jkw = {
        k: jnp.asarray(v.numpy().astype(np.int32) if v.dtype == torch.int64 else v.numpy())
        for k, v in kwargs.items()
    }
    float_idx = [i for i, x in enumerate(inputs) if x.is_floating_point()]

    def loss_fn(params, *xs):
        out = conv.fn(params, *xs, **jkw)
        leaves = jax.tree.leaves(out)
        return sum(
            (o * c).sum()
            for o, c in zip(leaves, cots, strict=False)
            if jnp.issubdtype(o.dtype, jnp.floating)
        )

    fwd = jax.jit(lambda p, *xs: conv.fn(p, *xs, **jkw))
    t0 = time.perf_counter()
    jout = jax.block_until_ready(fwd(conv.params, *jin))
    t_fwd = time.perf_counter() - t0
    jleaves = jax.tree.leaves(jout)
    assert len(jleaves) == len(tleaves), f"{name}: {len(jleaves)} outputs vs {len(tleaves)}"
    for i, (a, b) in enumerate(zip(jleaves, tleaves, strict=False)):
        assert_close(a, b, rtol=rtol, atol=atol, what=f"{name} output {i}")

    argnums = (0,) + tuple(i + 1 for i in float_idx)
    grad = jax.jit(jax.grad(loss_fn, argnums=argnums))
    t0 = time.perf_counter()
    grads = jax.block_until_ready(grad(conv.params, *jin))
    t_grad = time.perf_counter() - t0
    for gi, i in enumerate(float_idx):
        assert_close(
            grads[gi + 1], tin[i].grad, rtol=rtol, atol=grad_atol, what=f"{name} input grad {i}"
        )
    if param_grads:
        # parameters whose true gradient is zero (e.g. a key bias under softmax) hold only
        # rounding noise: their absolute tolerance is scaled by the largest parameter gradient
        floor = 1e-3 * max(
            float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None
        )
        n = 0
        for pname, p in model.named_parameters():
            if p.grad is None:
                continue
            assert pname in grads[0], f"{name}: parameter {pname} missing from params"
            assert_close(
                grads[0][pname],
                p.grad,
                rtol=rtol,
                atol=grad_atol,
                what=f"{name} param grad {pname}",
                scale_floor=floor,
            )
            n += 1
        assert n > 0

    if vmap:  # per-example vmap must agree with the real batch

        def one(*xs):
            kw = {k: v[None] for k, v in zip(jkw, xs[len(jin) :], strict=False)}
            out = conv.fn(conv.params, *[x[None] for x in xs[: len(jin)]], **kw)
            return jax.tree.map(lambda o: o[0], out)

        vout = jax.jit(jax.vmap(one))(*jin, *jkw.values())
        for i, (a, b) in enumerate(zip(jax.tree.leaves(vout), jleaves, strict=False)):
            assert_close(a, b, rtol=rtol, atol=atol, what=f"{name} vmap output {i}")
    print(
        f"\n[{name}] convert {t_convert:.2f}s, first jit forward {t_fwd:.2f}s, "
        f"first jit grad {t_grad:.2f}s, {len(conv.layers)} layers, "
        f"{len(conv.params)} params"
    )
    return conv
