"""jaxattr.robust against captum.robust's AttackComparator and MinParamPerturbation.

A tiny softmax classifier in torch and its JAX twin (same weights); Captum's FGSM/PGD on
one side, jaxattr.fgsm/pgd on the other, plus deterministic transformations (one whose
output changes from call to call, to exercise the statistics over attempts).
"""

from __future__ import annotations

import functools
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.robust import FGSM, PGD
from captum.robust import AttackComparator as CComparator
from captum.robust import MinParamPerturbation as CMinParam

import jaxattr
from jaxattr import robust
from tests.helpers import linear

RTOL = 1e-4


def close(ours, ref, rtol=RTOL):
    if isinstance(ref, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(ref)
        for o, r in zip(ours, ref, strict=True):
            close(o, r, rtol)
        return
    ours = np.asarray(ours, np.float64)
    ref = ref.detach().double().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    net = torch.nn.Sequential(lin, torch.nn.Softmax(dim=1)).eval()
    w, b = (jnp.asarray(t.detach().numpy()) for t in (lin.weight, lin.bias))

    def fn(x):
        return jax.nn.softmax(linear(x, w, b), axis=1)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array(fn(x).argmax(1))  # correctly classified to start with
    return net, fn, x, labels


Pair = namedtuple("Pair", ["correct", "prob"])


def t_metric(out, target):
    p = out[torch.arange(out.shape[0]), target]
    return Pair((out.argmax(1) == target).float(), p)


def j_metric(out, target):
    p = out[jnp.arange(out.shape[0]), target]
    return Pair((out.argmax(1) == target).astype(jnp.float32), p)


def counter_attack(lib):
    """A deterministic attack that differs on every call (stands in for a random one)."""
    state = {"n": 0}

    def attack(x):
        state["n"] += 1
        return x + 0.3 * state["n"] - 0.5

    return attack


@pytest.mark.parametrize("ppe", [1, 3])
def test_attack_comparator(models, ppe):
    net, fn, x, labels = models
    ref = CComparator(net, t_metric)
    ours = robust.AttackComparator(fn, j_metric)
    ref.add_attack(
        FGSM(net), "FGSM", attack_kwargs={"epsilon": 0.2}, additional_attack_arg_names=["target"]
    )
    ours.add_attack(
        functools.partial(jaxattr.fgsm, fn),
        "FGSM",
        attack_kwargs={"epsilon": 0.2},
        additional_attack_arg_names=["target"],
    )
    pgd_kw = {"radius": 0.3, "step_size": 0.1, "step_num": 4}
    ref.add_attack(PGD(net), "PGD", attack_kwargs=pgd_kw, additional_attack_arg_names=["target"])
    ours.add_attack(
        functools.partial(jaxattr.pgd, fn),
        "PGD",
        attack_kwargs=pgd_kw,
        additional_attack_arg_names=["target"],
    )
    ref.add_attack(counter_attack("torch"), "Shift", num_attempts=3)
    ours.add_attack(counter_attack("jax"), "Shift", num_attempts=3)
    for batch in (slice(0, 4), slice(4, 6)):  # two batches: the running summary
        xt, yt = torch.from_numpy(x[batch]), torch.from_numpy(labels[batch])
        r = ref.evaluate(xt, perturbations_per_eval=ppe, target=yt)
        o = ours.evaluate(x[batch], perturbations_per_eval=ppe, target=labels[batch])
        assert set(o) == set(r) == {"Original", "FGSM", "PGD", "Shift"}
        close(o["Original"], tuple(r["Original"]))
        assert type(o["Original"]).__name__ == "Pair" and o["Original"]._fields == Pair._fields
        for name in ("FGSM", "PGD", "Shift"):
            assert set(o[name]) == set(r[name])
            for stat in r[name]:
                close(tuple(o[name][stat]), tuple(r[name][stat]))
    rs, os_ = ref.summary(), ours.summary()
    assert set(os_) == set(rs)
    for key in rs:
        for stat in rs[key]:
            close(tuple(os_[key][stat]), tuple(rs[key][stat]))
    ours.reset()
    assert ours.summary() == {}


@pytest.mark.parametrize("mode", ["linear", "binary"])
@pytest.mark.parametrize("ppe", [1, 2])
def test_min_param_perturbation_fgsm(models, mode, ppe):
    net, fn, x, labels = models
    kw = dict(arg_name="epsilon", arg_min=0.0, arg_max=2.0, arg_step=0.1, mode=mode)
    ref = CMinParam(net, FGSM(net), **kw)
    ours = robust.MinParamPerturbation(fn, functools.partial(jaxattr.fgsm, fn), **kw)
    for i in range(3):
        xi, yi = x[i : i + 1], labels[i : i + 1]
        r_x, r_eps = ref.evaluate(
            torch.from_numpy(xi),
            target=torch.from_numpy(yi),
            perturbations_per_eval=ppe,
            attack_kwargs={"target": torch.from_numpy(yi)},
        )
        o_x, o_eps = ours.evaluate(
            xi, target=yi, perturbations_per_eval=ppe, attack_kwargs={"target": yi}
        )
        assert (o_eps is None) == (r_eps is None)
        if r_eps is not None:
            assert o_eps == pytest.approx(r_eps, abs=1e-12), (o_eps, r_eps)
            close(o_x, r_x)
            print(f"example {i}: minimal epsilon {o_eps:.1f} ({mode}, ppe={ppe}), as Captum")


def test_min_param_preproc_and_correct_fn(models):
    """A transformation searched before preprocessing, with a custom correct_fn."""
    net, fn, x, labels = models

    def t_correct(out, target, margin):
        return bool((out[torch.arange(out.shape[0]), target] > margin).all())

    def j_correct(out, target, margin):
        return bool((out[jnp.arange(out.shape[0]), target] > margin).all())

    kw = dict(
        arg_name="scale",
        arg_min=1.0,
        arg_max=4.0,
        arg_step=0.25,
        mode="binary",
        apply_before_preproc=True,
    )
    ref = CMinParam(
        net, lambda x, scale: x * scale, preproc_fn=lambda x: x - 0.1, correct_fn=t_correct, **kw
    )
    ours = robust.MinParamPerturbation(
        fn, lambda x, scale: x * scale, preproc_fn=lambda x: x - 0.1, correct_fn=j_correct, **kw
    )
    r_x, r_s = ref.evaluate(
        torch.from_numpy(x), target=torch.from_numpy(labels), correct_fn_kwargs={"margin": 0.4}
    )
    o_x, o_s = ours.evaluate(x, target=labels, correct_fn_kwargs={"margin": 0.4})
    assert o_s == r_s
    if r_s is not None:
        close(o_x, r_x)


def test_errors(models):
    net, fn, x, labels = models
    with pytest.raises(ValueError, match="arg_max must exceed"):
        robust.MinParamPerturbation(fn, lambda x, e: x, "e", 0.0, 0.1, 0.2)
    with pytest.raises(ValueError, match="mode must be one of"):
        robust.MinParamPerturbation(fn, lambda x, e: x, "e", 0.0, 1.0, 0.1, mode="golden")
    comp = robust.AttackComparator(fn, j_metric)
    comp.add_attack(lambda x: x, "Same")
    with pytest.raises(RuntimeError, match="same name"):
        comp.add_attack(lambda x: x, "Same")
    with pytest.raises(ValueError, match="2-D model output"):
        robust.default_correct_fn(np.zeros((2, 3, 4)), 0)
