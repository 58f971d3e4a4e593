"""Parity of the gradient and path methods with Captum on the same weights.

Tolerance: float32 on both sides, so results agree to ``rtol=1e-4`` with an absolute
floor of ``1e-4 * max|reference|`` (summation order differs between XLA and torch; the
observed error is ~1e-6 relative). Random methods are compared on the same draws: Captum's
calls to ``torch.normal``, ``np.random.choice`` and ``np.random.uniform`` are replaced by
the draws jaxattr makes from its key.
"""

from __future__ import annotations

import captum.attr as ca
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxattr
from tests import twins
from tests.helpers import Replay, assert_close, linear, samples_interleaved


@pytest.fixture(scope="module")
def cube():
    model = twins.CubeOut(2)
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    return model, twins.cube_out_jax(model), x


@pytest.mark.parametrize("abs_", [True, False])
@pytest.mark.parametrize("target", [3, [1, 7]])
def test_saliency(cnn, abs_, target):
    model, fn, x = cnn
    ref = ca.Saliency(model).attribute(twins.to_torch(x), target=target, abs=abs_)
    assert_close(jaxattr.saliency(fn, x, target=target, abs=abs_), ref)


def test_input_x_gradient(cnn):
    model, fn, x = cnn
    ref = ca.InputXGradient(model).attribute(twins.to_torch(x), target=5)
    assert_close(jaxattr.input_x_gradient(fn, x, target=5), ref)


# Every quadrature with its convergence delta (the attribution is compared too); the plain
# return for the default quadrature only.
@pytest.mark.parametrize(
    "method,return_delta",
    [(m, True) for m in jaxattr.QUADRATURES] + [("gausslegendre", False)],
)
def test_integrated_gradients_cnn(cnn, method, return_delta):
    model, fn, x = cnn
    ig = ca.IntegratedGradients(model)
    ref = ig.attribute(
        twins.to_torch(x),
        target=[2, 9],
        n_steps=12,
        method=method,
        return_convergence_delta=return_delta,
    )
    ours = jaxattr.integrated_gradients(
        fn, x, target=[2, 9], n_steps=12, method=method, return_delta=return_delta
    )
    if return_delta:
        assert_close(ours[0], ref[0])
        # the delta is a small difference of large sums: compare it on the output's scale
        scale = float(np.abs(twins.to_np(model(twins.to_torch(x)))).max())
        np.testing.assert_allclose(ours[1], twins.to_np(ref[1]), atol=1e-4 * scale)
    else:
        assert_close(ours, ref)


def test_integrated_gradients_baseline_and_local(cnn):
    model, fn, x = cnn
    base = np.full((1, 3, 32, 32), 0.25, np.float32)
    ref = ca.IntegratedGradients(model, multiply_by_inputs=False).attribute(
        twins.to_torch(x), baselines=twins.to_torch(base), target=1, n_steps=10
    )
    ours = jaxattr.integrated_gradients(
        fn, x, baselines=base, target=1, n_steps=10, multiply_by_inputs=False, batch_size=3
    )
    assert_close(ours, ref)


def test_integrated_gradients_tuple_inputs(two_input):
    model, fn, (x1, x2) = two_input
    b = (np.float32(0.5), np.zeros((1, 3), np.float32))
    ref, ref_delta = ca.IntegratedGradients(model).attribute(
        (twins.to_torch(x1), twins.to_torch(x2)),
        baselines=(0.5, twins.to_torch(b[1])),
        target=[0, 4, 2],
        n_steps=20,
        return_convergence_delta=True,
    )
    ours, delta = jaxattr.integrated_gradients(
        fn, (x1, x2), baselines=b, target=[0, 4, 2], n_steps=20, return_delta=True
    )
    assert isinstance(ours, tuple) and len(ours) == 2
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])
    np.testing.assert_allclose(delta, twins.to_np(ref_delta), atol=1e-5)


@pytest.mark.parametrize("target", [(1, 2), [(0, 0), (2, 3), (1, 1)]])
def test_tuple_targets_on_3d_output(cube, target):
    model, fn, x = cube
    ref = ca.IntegratedGradients(model).attribute(twins.to_torch(x), target=target, n_steps=8)
    assert_close(jaxattr.integrated_gradients(fn, x, target=target, n_steps=8), ref)
    ref = ca.Saliency(model).attribute(twins.to_torch(x), target=target, abs=False)
    assert_close(jaxattr.saliency(fn, x, target=target, abs=False), ref)


@pytest.mark.parametrize("nt_type", jaxattr.NT_TYPES)
def test_noise_tunnel_saliency(cnn, nt_type, monkeypatch):
    model, fn, x = cnn
    key = jax.random.key(3)
    nt_samples, stdevs = 4, 0.3
    k_noise, _, _ = jax.random.split(key, 3)
    noise = jaxattr.draw_noise(k_noise, x, stdevs, nt_samples)
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    ref = ca.NoiseTunnel(ca.Saliency(model)).attribute(
        twins.to_torch(x), nt_type=nt_type, nt_samples=nt_samples, stdevs=stdevs, target=4
    )
    monkeypatch.undo()
    tunnel = jaxattr.noise_tunnel(
        jaxattr.saliency, nt_type=nt_type, nt_samples=nt_samples, stdevs=stdevs
    )
    assert_close(tunnel(fn, x, key=key, target=4), ref, rtol=2e-4)


def test_noise_tunnel_integrated_gradients_tuple_with_delta(two_input, monkeypatch):
    model, fn, x = two_input
    key = jax.random.key(4)
    stdevs = (0.2, 0.1)
    k_noise, _, _ = jax.random.split(key, 3)
    noise = jaxattr.draw_noise(k_noise, x, stdevs, 3)
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(n) for n in noise]))
    ref, ref_delta = ca.NoiseTunnel(ca.IntegratedGradients(model)).attribute(
        tuple(map(twins.to_torch, x)),
        nt_samples=3,
        stdevs=stdevs,
        target=1,
        n_steps=10,
        return_convergence_delta=True,
    )
    monkeypatch.undo()
    tunnel = jaxattr.noise_tunnel(jaxattr.integrated_gradients, nt_samples=3, stdevs=stdevs)
    ours, delta = tunnel(fn, x, key=key, target=1, n_steps=10, return_delta=True)
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])
    assert delta.shape == (3, 3)
    np.testing.assert_allclose(np.asarray(delta).reshape(-1), twins.to_np(ref_delta), atol=1e-5)


@pytest.mark.parametrize("stdevs", [0.0, 0.2])
def test_gradient_shap(cnn, stdevs, monkeypatch):
    model, fn, x = cnn
    dist = np.random.default_rng(5).normal(size=(6, 3, 32, 32)).astype(np.float32)
    key = jax.random.key(5)
    n_samples = 3
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, dist.shape[0], n_samples, stdevs)
    # Captum draws, in order: baseline indices, input noise, alphas; all example-major
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref, ref_delta = ca.GradientShap(model).attribute(
        twins.to_torch(x),
        twins.to_torch(dist),
        n_samples=n_samples,
        stdevs=stdevs,
        target=[3, 8],
        return_convergence_delta=True,
    )
    monkeypatch.undo()
    ours, delta = jaxattr.gradient_shap(
        fn,
        x,
        baselines=dist,
        key=key,
        n_samples=n_samples,
        stdevs=stdevs,
        target=[3, 8],
        return_delta=True,
    )
    assert_close(ours, ref)
    scale = float(np.abs(twins.to_np(model(twins.to_torch(x)))).max())
    np.testing.assert_allclose(
        np.asarray(delta).reshape(-1), twins.to_np(ref_delta), atol=1e-4 * scale
    )


def test_input_baseline_x_gradient_matches_captum(cnn, monkeypatch):
    model, fn, x = cnn
    alphas = np.array([0.3, 0.8])
    monkeypatch.setattr(np.random, "uniform", Replay([alphas]))
    from captum.attr._core.gradient_shap import InputBaselineXGradient

    ref = InputBaselineXGradient(model).attribute(
        twins.to_torch(x), baselines=twins.to_torch(x * 0 + 0.1), target=0
    )
    monkeypatch.undo()
    ours = jaxattr.input_baseline_x_gradient(
        fn, x, baselines=0.1, alphas=jnp.asarray(alphas), target=0
    )
    assert_close(ours, ref)


@pytest.fixture(scope="module")
def mlp_relu():
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)
    ).eval()
    w1, b1, w2, b2 = (jnp.asarray(p.detach().numpy()) for p in model.parameters())

    def fn(x):
        return linear(jax.nn.relu(linear(x, w1, b1)), w2, b2)

    return model, fn, np.random.default_rng(7).normal(size=(2, 6)).astype(np.float32)


@pytest.mark.parametrize("form", ["no_arguments", "of_the_inputs"])
def test_callable_baselines_gradient_shap_and_deep_lift_shap(mlp_relu, form, monkeypatch):
    """Captum's ``baselines`` may be a function making the distribution: called with no
    arguments, or with the inputs (issue 15: a bare TypeError before)."""
    model, fn, x = mlp_relu
    dist = np.random.default_rng(6).normal(size=(3, 6)).astype(np.float32)
    if form == "no_arguments":
        ref_base, our_base = (lambda: twins.to_torch(dist)), (lambda: dist)
    else:

        def ref_base(inp):
            return torch.cat([inp * 0.0, inp * 0.25])

        def our_base(x_):
            return jnp.concatenate([x_ * 0.0, x_ * 0.25])

    m = 3 if form == "no_arguments" else 2 * x.shape[0]
    key = jax.random.key(9)
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, m, 2, 0.0)
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref = ca.GradientShap(model).attribute(twins.to_torch(x), ref_base, n_samples=2, target=3)
    monkeypatch.undo()
    assert_close(
        jaxattr.gradient_shap(fn, x, baselines=our_base, key=key, n_samples=2, target=3), ref
    )
    ref = ca.DeepLiftShap(model).attribute(twins.to_torch(x), ref_base, target=[1, 2])
    assert_close(jaxattr.deep_lift_shap(fn, x, baselines=our_base, target=[1, 2]), ref)
    with pytest.raises(TypeError, match="a callable must return the baselines"):
        jaxattr.gradient_shap(fn, x, baselines=lambda: None, key=key, target=3)


# --------------------------------------------------------------------------------------
# Progress bars (issue 15): every method with show_progress advances its bar to the end
# (k/k) before clearing it; the table must name every such public method
# --------------------------------------------------------------------------------------

_PW = jax.random.normal(jax.random.key(0), (6, 3))
_PX = np.asarray(jax.random.normal(jax.random.key(1), (4, 6)))
_PIMG = np.asarray(jax.random.uniform(jax.random.key(2), (1, 1, 8, 8)))
_PKEY = jax.random.key(3)


def _pfn(x):
    return jnp.tanh(x @ _PW)


def _pimg(a):
    return jnp.stack([a.sum((1, 2, 3)), a.mean((1, 2, 3))], axis=1)


def _lb_perturb(key, x0):
    return jax.random.bernoulli(key, 0.5, (1, 6)).astype(jnp.float32)


def _lb_from(z, x0):
    return x0 * z


def _lb_sim(x0, xp, z):
    return jnp.exp(-jnp.sum((x0 - xp) ** 2))


def _structured_pfn():
    from jaxattr.structure import Layer, default_intercept

    class Two:
        params = {"w": _PW}
        layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"}),
                  "act": Layer("act", "activation", "Tanh")}  # fmt: skip

        def apply(self, params, x, intercept=None):
            intercept = intercept or default_intercept
            h = intercept(
                self.layers["fc"], lambda p, v: v @ p["weight"], {"weight": params["w"]}, x
            )
            return intercept(self.layers["act"], lambda p, v: jnp.tanh(v), {}, h)

    return Two()


def _influence_setup():
    import optax

    from jaxattr import influence

    w1 = jax.random.normal(jax.random.key(4), (6, 5))
    ckpts = [{"w": w1 * s, "learning_rate": 0.5} for s in (1.0, 0.5)]
    y = np.arange(4) % 3

    def net(p, x):
        return jnp.tanh(x @ p["w"])[:, :3]

    def loss(out, y_):
        return optax.softmax_cross_entropy_with_integer_labels(out, y_)

    return influence, net, ckpts, (_PX, y), loss


def _tracin(which):
    influence, net, ckpts, data, loss = _influence_setup()
    tr = influence.TracInCP(net, data, ckpts, loss_fn=loss, batch_size=2)
    return getattr(tr, which)


def _naive(which):
    influence, net, ckpts, data, loss = _influence_setup()
    cls = (
        influence.NaiveInfluenceFunction if "naive" in which else influence.ArnoldiInfluenceFunction
    )
    kw = {} if "naive" in which else {"arnoldi_dim": 4, "projection_dim": 2}
    return cls(net, data, ckpts[0], loss_fn=loss, batch_size=2, show_progress=True, **kw)


PROGRESS = {
    "feature_ablation": lambda: jaxattr.feature_ablation(
        _pfn, _PX, target=0, batch_size=2, show_progress=True
    ),
    "feature_permutation": lambda: jaxattr.feature_permutation(
        _pfn, _PX, key=_PKEY, target=0, batch_size=2, show_progress=True
    ),
    "occlusion": lambda: jaxattr.occlusion(
        _pfn, _PX, sliding_window_shapes=(1,), target=0, batch_size=2, show_progress=True
    ),
    "tiled_occlusion": lambda: jaxattr.tiled_occlusion(
        _pimg, _PIMG, window=(1, 4, 4), show_progress=True
    ),
    "shapley_value_sampling": lambda: jaxattr.shapley_value_sampling(
        _pfn, _PX, key=_PKEY, n_samples=2, target=0, batch_size=3, show_progress=True
    ),
    "shapley_values": lambda: jaxattr.shapley_values(
        _pfn,
        _PX,
        feature_mask=np.array([[0, 0, 1, 1, 2, 2]]),
        target=0,
        batch_size=2,
        show_progress=True,
    ),
    "kernel_shap": lambda: jaxattr.kernel_shap(
        _pfn, _PX[:1], key=_PKEY, n_samples=8, target=0, batch_size=3, show_progress=True
    ),
    "lime": lambda: jaxattr.lime(
        _pfn, _PX[:1], key=_PKEY, n_samples=8, target=0, batch_size=3, show_progress=True
    ),
    "lime_base": lambda: jaxattr.lime_base(
        _pfn,
        _PX[:1],
        key=_PKEY,
        n_samples=8,
        target=0,
        batch_size=3,
        interpretable_model="linear",
        similarity_func=_lb_sim,
        perturb_func=_lb_perturb,
        from_interp_rep_transform=_lb_from,
        show_progress=True,
    ),  # fmt: skip
    "rise": lambda: jaxattr.rise(
        _pimg,
        _PIMG,
        key=_PKEY,
        num_masks=6,
        num_cells=2,
        batch_size=2,
        target=0,
        show_progress=True,
    ),
    "neuron_feature_ablation": lambda: jaxattr.neuron_feature_ablation(
        _structured_pfn(), _PX, "fc", 1, batch_size=2, show_progress=True
    ),
    "layer_feature_permutation": lambda: jaxattr.layer_feature_permutation(
        _structured_pfn(), _PX, "fc", key=_PKEY, target=0, batch_size=1, show_progress=True
    ),
    "attribute_dataset": lambda: jaxattr.attribute_dataset(
        jaxattr.saliency, _pfn, [_PX[:2], _PX[2:]], target=0, show_progress=True
    ),
    "TracInCP.influence": lambda: _tracin("influence")(
        (_PX[:2], np.array([0, 1])), show_progress=True
    ),
    "TracInCP.self_influence": lambda: _tracin("self_influence")(show_progress=True),
    "NaiveInfluenceFunction.influence": lambda: _naive("naive").influence(
        (_PX[:2], np.array([0, 1])), show_progress=True
    ),
    "ArnoldiInfluenceFunction.self_influence": lambda: _naive("arnoldi").self_influence(
        show_progress=True
    ),
}


def test_every_method_with_show_progress_has_a_progress_case():
    import inspect

    from jaxattr import influence

    names = set()
    for name in jaxattr.__all__:
        obj = getattr(jaxattr, name)
        if inspect.isfunction(obj) and "show_progress" in inspect.signature(obj).parameters:
            names.add(name)
    covered = {k.split(".")[0] for k in PROGRESS}
    assert names <= covered, sorted(names - covered)
    for cls_name in ("TracInCP", "NaiveInfluenceFunction", "ArnoldiInfluenceFunction"):
        assert cls_name in covered
        cls = getattr(influence, cls_name)
        assert "show_progress" in inspect.signature(cls.influence).parameters


@pytest.mark.parametrize("name", list(PROGRESS))
def test_progress_bars_advance_to_the_end(name, capsys):
    import re

    capsys.readouterr()
    PROGRESS[name]()
    err = capsys.readouterr().err
    counts = re.findall(r"(\d+)/(\d+)", err)
    assert counts, f"{name}: no progress bar drawn: {err[-300:]!r}"
    for total in {t for _, t in counts}:
        assert f"{total}/{total}" in err, f"{name}: a bar of {total} stopped at " + ", ".join(
            f"{d}/{t}" for d, t in counts if t == total
        )
