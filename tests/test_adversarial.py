"""FGSM and PGD against ``captum.robust`` on the same weights, plus their invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.robust import FGSM, PGD

import jaxattr
from tests import twins


@pytest.fixture(scope="module")
def cnn():
    model = twins.seed_cnn(0)
    probs = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    fn = twins.seed_cnn_jax(model)
    x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32)).astype(np.float32)
    return probs, (lambda a: jax.nn.softmax(fn(a), axis=1)), x


def close_mostly(ours, ref, tol=1e-5, frac=1e-3):
    """Equal up to float32 noise, allowing a few sign flips where the gradient is ~0."""
    ours, ref = np.asarray(ours), twins.to_np(ref)
    assert ours.shape == ref.shape
    bad = ~np.isclose(ours, ref, rtol=tol, atol=tol)
    assert bad.mean() <= frac, f"{bad.sum()} of {bad.size} elements differ"


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm(cnn, targeted):
    model, fn, x = cnn
    mask = np.zeros_like(x)
    mask[:, :, 8:24] = 1.0
    ref = FGSM(model, lower_bound=0.0, upper_bound=1.0).perturb(
        twins.to_torch(x),
        epsilon=0.05,
        target=[3, 7],
        targeted=targeted,
        mask=twins.to_torch(mask),
    )
    ours = jaxattr.fgsm(
        fn,
        x,
        epsilon=0.05,
        target=[3, 7],
        targeted=targeted,
        mask=mask,
        lower_bound=0.0,
        upper_bound=1.0,
    )
    close_mostly(ours, ref)


def test_fgsm_custom_loss(cnn):
    model, fn, x = cnn
    labels = np.array([1, 2])
    ref = FGSM(model, loss_func=lambda out, y: out[torch.arange(2), y] ** 2).perturb(
        twins.to_torch(x), epsilon=0.1, target=torch.from_numpy(labels)
    )
    ours = jaxattr.fgsm(
        fn,
        x,
        epsilon=0.1,
        target=jnp.asarray(labels),
        loss_func=lambda y, t: y[jnp.arange(2), t] ** 2,
    )
    close_mostly(ours, ref)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd(cnn, norm):
    model, fn, x = cnn
    radius = 0.1 if norm == "Linf" else 1.0
    ref = PGD(model, lower_bound=0.0, upper_bound=1.0).perturb(
        twins.to_torch(x),
        radius=radius,
        step_size=0.02,
        step_num=4,
        target=[0, 5],
        norm=norm,
    )
    ours = jaxattr.pgd(
        fn,
        x,
        radius=radius,
        step_size=0.02,
        step_num=4,
        target=[0, 5],
        norm=norm,
        lower_bound=0.0,
        upper_bound=1.0,
    )
    close_mostly(ours, ref, frac=5e-3)


def test_pgd_random_start_linf(cnn, monkeypatch):
    model, fn, x = cnn
    key = jax.random.key(3)
    u = np.array(jax.random.uniform(jax.random.split(key, 1)[0], x.shape, jnp.float32))
    calls = [torch.from_numpy(u)]
    monkeypatch.setattr(torch, "rand_like", lambda t: calls.pop(0))
    ref = PGD(model).perturb(
        twins.to_torch(x), radius=0.05, step_size=0.01, step_num=2, target=4, random_start=True
    )
    monkeypatch.undo()
    ours = jaxattr.pgd(
        fn, x, radius=0.05, step_size=0.01, step_num=2, target=4, random_start=True, key=key
    )
    close_mostly(ours, ref, frac=5e-3)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_stays_in_the_ball(cnn, norm):
    _, fn, x = cnn
    out = jaxattr.pgd(
        fn,
        x,
        radius=0.2,
        step_size=0.1,
        step_num=5,
        target=1,
        norm=norm,
        random_start=True,
        key=jax.random.key(0),
        lower_bound=0.0,
        upper_bound=1.0,
    )
    diff = np.asarray(out) - x
    if norm == "Linf":
        assert np.abs(diff).max() <= 0.2 + 1e-6
    else:
        assert np.sqrt((diff.reshape(2, -1) ** 2).sum(1)).max() <= 0.2 + 1e-5
    assert np.asarray(out).min() >= 0.0 and np.asarray(out).max() <= 1.0


def test_pgd_lowers_the_target_probability(cnn):
    _, fn, x = cnn
    before = np.asarray(fn(x))[np.arange(2), [2, 2]]
    adv = jaxattr.pgd(fn, x, radius=0.05, step_size=0.01, step_num=10, target=2)
    after = np.asarray(fn(adv))[np.arange(2), [2, 2]]
    assert (after < before).all()


def test_errors_name_the_argument():
    fn = lambda a: jax.nn.softmax(a, axis=1)  # noqa: E731
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="norm must be one of"):
        jaxattr.pgd(fn, x, radius=0.1, step_size=0.1, step_num=2, target=0, norm="L1")
    with pytest.raises(ValueError, match="pgd with random_start=True is random"):
        jaxattr.pgd(fn, x, radius=0.1, step_size=0.1, step_num=2, target=0, random_start=True)
    with pytest.raises(ValueError, match=r"mask has shape \(4,\)"):
        jaxattr.fgsm(fn, x, epsilon=0.1, target=0, mask=jnp.ones(4))
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        jaxattr.fgsm(fn, x, epsilon=-1.0, target=0)
