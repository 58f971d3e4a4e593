"""Parity with Zennit's attributors (Gradient, SmoothGrad, IntegratedGradients).

Same weights, float32 on both sides; tolerance as in test_parity_captum (rtol 1e-4 with an
absolute floor of 1e-4 * max|reference|). SmoothGrad is compared on the same draws:
Zennit's ``torch.randn_like`` is replaced by jaxattr's standard-normal draws.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad

import jaxattr
from tests import twins
from tests.test_parity_captum import _Replay, assert_close


@pytest.fixture(scope="module")
def cnn():
    model = twins.seed_cnn(1)
    x = np.random.default_rng(10).normal(size=(2, 3, 32, 32)).astype(np.float32)
    return model, twins.seed_cnn_jax(model), x


def _zennit_one_hot_max(output):
    values, indices = output.max(1)
    return values[:, None] * torch.eye(output.shape[1])[indices]


def test_gradient_one_hot_constant(cnn):
    model, fn, x = cnn
    with Gradient(model) as attributor:
        _, ref = attributor(twins.to_torch(x), torch.eye(10)[[0, 0]])
    assert_close(jaxattr.gradient(fn, x, target=np.eye(10, dtype=np.float32)[[0]]), ref)


def test_gradient_callable_output_relevance(cnn):
    model, fn, x = cnn
    with Gradient(model) as attributor:
        _, ref = attributor(twins.to_torch(x), _zennit_one_hot_max)
    assert_close(jaxattr.gradient(fn, x, target=jaxattr.one_hot_max), ref)


def test_gradient_identity_output_relevance(cnn):
    model, fn, x = cnn
    with Gradient(model, attr_output=lambda y: y) as attributor:
        _, ref = attributor(twins.to_torch(x))
    assert_close(jaxattr.gradient(fn, x, target=lambda y: y), ref)


@pytest.mark.parametrize("n_iter", [1, 6])
def test_smoothgrad(cnn, n_iter, monkeypatch):
    model, fn, x = cnn
    key = jax.random.key(11)
    normal, _ = jaxattr.smoothgrad_draws(key, x, 0.2, n_iter)
    draws = [torch.from_numpy(np.asarray(z)) for z in np.asarray(normal)]
    import zennit.attribution as za

    monkeypatch.setattr(za.torch, "randn_like", _Replay(draws))
    with SmoothGrad(model, noise_level=0.2, n_iter=n_iter) as attributor:
        _, ref = attributor(twins.to_torch(x), torch.eye(10)[[4, 4]])
    monkeypatch.undo()
    ours = jaxattr.smoothgrad(fn, x, key=key, noise_level=0.2, n_iter=n_iter, target=4)
    assert_close(ours, ref)
    if n_iter == 1:  # the clean sample alone is the plain gradient
        assert_close(ours, jaxattr.gradient(fn, x, target=4))


def test_integrated_gradients(cnn):
    model, fn, x = cnn
    with IntegratedGradients(model, n_iter=20) as attributor:
        _, ref = attributor(twins.to_torch(x), torch.eye(10)[[6, 6]])
    ours = jaxattr.integrated_gradients(fn, x, target=6, n_steps=20, method="riemann_right")
    assert_close(ours, ref)
