"""The convolution's two forms (slice patches, XLA's) agree with torch, values and grads."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from jaxattr.bridge import conv as C

CASES = [
    # N, C, O, H, W, k, stride, pad, dilation
    (2, 3, 4, 5, 5, 3, 1, 1, 1),
    (3, 8, 8, 2, 2, 3, 1, 1, 1),  # the tiny map XLA's CPU convolution is slow on
    (2, 4, 6, 7, 9, 3, 2, 1, 1),
    (1, 5, 3, 8, 8, 3, 1, 2, 2),
    (2, 6, 4, 7, 7, 1, 2, 0, 1),
    (2, 3, 2, 6, 5, (2, 3), (1, 2), (0, 1), 1),
    (1, 2, 3, 4, 4, 5, 1, 2, 1),  # kernel larger than the map (padding supplies it)
    (1, 4, 16, 3, 3, 3, 1, 1, 1),  # fewer patch rows than output channels: weight as is
    (2, 3, 24, 5, 6, 3, 2, 1, 2),  # the same, strided and dilated
]


def _torch(x, w, k, s, p, d):
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    out = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p, dilation=d)
    (out**2).sum().backward()
    return out.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _pairs(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("form", [C.conv2d_slices, C.conv2d_xla, C.conv2d])
@pytest.mark.parametrize("case", CASES)
def test_form_matches_torch(form, case):
    n, c, o, h, wd, k, s, p, d = case
    k, s, p, d = _pairs(k), _pairs(s), _pairs(p), _pairs(d)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((o, c, *k)).astype(np.float32)
    pads = [(p[0], p[0]), (p[1], p[1])]
    want, gx, gw = _torch(x, w, k, s, p, d)

    def loss(x, w):
        return (form(x, w, s, pads, d) ** 2).sum()

    got = jax.jit(lambda x, w: form(x, w, s, pads, d))(x, w)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(dx), gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), gw, rtol=1e-4, atol=1e-4)


def test_second_order_derivatives_agree():
    """Double backward (e.g. gradients of saliency) is the same through either form."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    pads = [(1, 1), (1, 1)]

    def hvp(form):
        g = jax.grad(lambda x: (form(x, w, (1, 1), pads, (1, 1)) ** 3).sum())
        return jax.jvp(g, (x,), (np.ones_like(x),))[1]

    np.testing.assert_allclose(
        np.asarray(hvp(C.conv2d_slices)), np.asarray(hvp(C.conv2d_xla)), rtol=1e-4, atol=1e-3
    )


def test_the_choice_follows_the_map_size():
    three = [(1, 1), (1, 1)]
    assert C.use_slices((20, 512, 2, 2), (512, 512, 3, 3), (1, 1), three, (1, 1))
    assert C.use_slices((1, 512, 7, 7), (512, 512, 3, 3), (1, 1), three, (1, 1))
    assert not C.use_slices((8, 64, 56, 56), (64, 64, 3, 3), (1, 1), three, (1, 1))
    # patches smaller than the weight (rows <= output channels), and 1x1 kernels
    assert C.use_slices((8, 512, 7, 7), (512, 512, 3, 3), (1, 1), three, (1, 1))
    assert C.use_slices((8, 64, 56, 56), (128, 64, 1, 1), (2, 2), [(0, 0), (0, 0)], (1, 1))
    assert not C.use_slices((8, 128, 28, 28), (128, 128, 3, 3), (1, 1), three, (1, 1))
    assert not C.use_slices((1, 3, 4, 4), (2, 3, 3, 3), (1, 1), [(-1, 0), (0, 0)], (1, 1))
    # shallow convolutions (C*kh*kw < 2048) use XLA's form beyond 2x2 maps: as fast or
    # faster there, and 2-4x cheaper to compile (benchmarks/results/conv.md)
    assert not C.use_slices((2, 32, 8, 8), (32, 32, 3, 3), (1, 1), three, (1, 1))
    assert not C.use_slices((50, 128, 4, 4), (128, 128, 3, 3), (1, 1), three, (1, 1))
    assert C.use_slices((32, 128, 2, 2), (128, 128, 3, 3), (1, 1), three, (1, 1))
    # deep ones beyond 512 rows only on maps up to 4x4 (IG's 50-step batches on 7x7: XLA)
    assert C.use_slices((50, 256, 4, 4), (256, 256, 3, 3), (1, 1), three, (1, 1))
    assert not C.use_slices((50, 256, 7, 7), (256, 256, 3, 3), (1, 1), three, (1, 1))
