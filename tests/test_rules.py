"""Each LRP rule against a slow reference written from its formula, plus conservation,
composites, canonizers and the Flax adapters.

The references loop over the explicit contributions ``z_ij = x_i w_ij`` of a dense layer
(a convolution is tested through its explicit matrix), following the papers (Bach et al.
2015, Montavon et al. 2017/2019) in Zennit's generalised forms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr._caching import partition
from jaxattr.structure import Layer

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------
# A small structured model written by hand
# --------------------------------------------------------------------------------------


class Seq:
    """A sequential structured model: ``[(name, kind, op, fn(p, x), params), ...]``."""

    def __init__(self, steps):
        self.steps = steps
        self.params = {name: p for name, _, _, _, p in steps}
        self.layers = {
            name: Layer(name, kind, op, {k: f"{name}.{k}" for k in p})
            for name, kind, op, _, p in steps
        }

    def apply(self, params, x, intercept=None):
        intercept = intercept or jaxattr.structure.default_intercept
        for name, _, _, fn, _ in self.steps:
            x = intercept(self.layers[name], fn, params[name], x)
        return x

    def __call__(self, x):
        return self.apply(self.params, x)


def _last_axis(v, x):
    """A per-feature vector given ``x``'s leading axes explicitly (the suite runs with
    ``jax_numpy_rank_promotion="raise"``)."""
    return jnp.reshape(v, (1,) * (x.ndim - 1) + (-1,))


def dense(p, x):
    out = x @ p["weight"]
    return out + _last_axis(p["bias"], out) if "bias" in p else out


def relu(p, x):
    return jax.nn.relu(x)


def conv(p, x):
    y = jax.lax.conv_general_dilated(
        x, p["weight"], (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + p["bias"][None, :, None, None] if "bias" in p else y


def one_layer(fn, p, kind="linear"):
    return Seq([("l", kind, "", fn, p)])


# --------------------------------------------------------------------------------------
# Slow references on explicit contributions
# --------------------------------------------------------------------------------------


def stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def ref_dense(rule, x, w, b, r_out, **kw):
    """Relevance of a dense layer ``z_j = sum_i x_i w_ij + b_j`` for one example."""
    x, w, b, r_out = (np.asarray(a, np.float64) for a in (x, w, b, r_out))
    n_in, n_out = w.shape
    pos, neg = (lambda a: np.maximum(a, 0)), (lambda a: np.minimum(a, 0))
    r = np.zeros(n_in)
    for j in range(n_out):
        if rule == "epsilon":
            eps = kw.get("epsilon", 1e-6)
            z = sum(x[i] * w[i, j] for i in range(n_in)) + b[j]
            for i in range(n_in):
                r[i] += x[i] * w[i, j] / stab(z, eps) * r_out[j]
        elif rule == "z_plus":
            c = [pos(x[i]) * pos(w[i, j]) + neg(x[i]) * neg(w[i, j]) for i in range(n_in)]
            z = sum(c) + pos(b[j])
            for i in range(n_in):
                r[i] += c[i] / stab(z) * r_out[j]
        elif rule == "alpha_beta":
            a, bt = kw["alpha"], kw["beta"]
            cp = [pos(x[i]) * pos(w[i, j]) + neg(x[i]) * neg(w[i, j]) for i in range(n_in)]
            cn = [pos(x[i]) * neg(w[i, j]) + neg(x[i]) * pos(w[i, j]) for i in range(n_in)]
            zp, zn = sum(cp) + pos(b[j]), sum(cn) + neg(b[j])
            for i in range(n_in):
                r[i] += (a * cp[i] / stab(zp) - bt * cn[i] / stab(zn)) * r_out[j]
        elif rule == "gamma":
            g = kw["gamma"]
            z = sum(x[i] * w[i, j] for i in range(n_in)) + b[j]
            if z > 0:
                c = [
                    pos(x[i]) * (w[i, j] + g * pos(w[i, j]))
                    + neg(x[i]) * (w[i, j] + g * neg(w[i, j]))
                    for i in range(n_in)
                ]
                d = sum(c) + b[j] + g * pos(b[j])
            elif z < 0:
                c = [
                    pos(x[i]) * (w[i, j] + g * neg(w[i, j]))
                    + neg(x[i]) * (w[i, j] + g * pos(w[i, j]))
                    for i in range(n_in)
                ]
                d = sum(c) + b[j] + g * neg(b[j])
            else:
                continue
            for i in range(n_in):
                r[i] += c[i] / stab(d) * r_out[j]
        elif rule == "z_box":
            lo, hi = kw["low"], kw["high"]
            c = [x[i] * w[i, j] - lo * pos(w[i, j]) - hi * neg(w[i, j]) for i in range(n_in)]
            z = sum(c)  # the biases cancel: b - b+ - b- = 0
            for i in range(n_in):
                r[i] += c[i] / stab(z) * r_out[j]
        elif rule == "w_square":
            z = sum(w[i, j] ** 2 for i in range(n_in)) + b[j] ** 2
            for i in range(n_in):
                r[i] += w[i, j] ** 2 / stab(z) * r_out[j]
        elif rule == "flat":
            for i in range(n_in):
                r[i] += 1.0 / stab(float(n_in)) * r_out[j]
        else:
            raise ValueError(rule)
    return r


RULES = {
    "epsilon": (lambda: jaxattr.epsilon(0.1), {"epsilon": 0.1}),
    "epsilon0": (lambda: jaxattr.epsilon(0.0), {"epsilon": 0.0}),
    "z_plus": (jaxattr.z_plus, {}),
    "alpha_beta": (lambda: jaxattr.alpha_beta(2.0, 1.0), {"alpha": 2.0, "beta": 1.0}),
    "alpha1_beta0": (lambda: jaxattr.alpha_beta(1.0, 0.0), {"alpha": 1.0, "beta": 0.0}),
    "gamma": (lambda: jaxattr.gamma(0.25), {"gamma": 0.25}),
    "z_box": (lambda: jaxattr.z_box(-2.0, 2.0), {"low": -2.0, "high": 2.0}),
    "w_square": (jaxattr.w_square, {}),
    "flat": (jaxattr.rules.flat, {}),
}


def _ref_name(name):
    return {"epsilon0": "epsilon", "alpha1_beta0": "alpha_beta"}.get(name, name)


def _rel(rule, model, x, r_out):
    comp = jaxattr.Composite(layer_map=((("linear", "conv"), rule),))
    return jaxattr.lrp(model, x, composite=comp, target=r_out)


@pytest.mark.parametrize("name", list(RULES))
def test_rule_on_dense_layer_matches_formula(name):
    make, kw = RULES[name]
    x = RNG.normal(size=(2, 5)).astype(np.float32)
    w = RNG.normal(size=(5, 4)).astype(np.float32)
    b = RNG.normal(size=(4,)).astype(np.float32)
    r_out = RNG.normal(size=(2, 4)).astype(np.float32)
    ours = _rel(make(), one_layer(dense, {"weight": w, "bias": b}), x, r_out)
    for n in range(2):
        ref = ref_dense(_ref_name(name), x[n], w, b, r_out[n], **kw)
        np.testing.assert_allclose(ours[n], ref, rtol=2e-4, atol=2e-5)


def _conv_matrix(p, shape):
    """The explicit (in, out) matrix and bias vector of a convolution."""
    nobias = {"weight": p["weight"]}
    n_in = int(np.prod(shape))
    eye = jnp.eye(n_in).reshape((n_in, *shape))
    mat = jax.vmap(lambda e: conv(nobias, e[None]).reshape(-1))(eye)
    bias = conv(p, jnp.zeros((1, *shape))).reshape(-1)
    return np.asarray(mat), np.asarray(bias)


@pytest.mark.parametrize(
    "name", ["epsilon", "z_plus", "alpha_beta", "gamma", "z_box", "w_square", "flat"]
)
def test_rule_on_conv_layer_matches_formula(name):
    make, kw = RULES[name]
    shape = (2, 4, 4)
    x = RNG.normal(size=(1, *shape)).astype(np.float32)
    p = {
        "weight": RNG.normal(size=(3, 2, 3, 3)).astype(np.float32),
        "bias": RNG.normal(size=(3,)).astype(np.float32),
    }
    r_out = RNG.normal(size=(1, 3, 4, 4)).astype(np.float32)
    ours = _rel(make(), one_layer(conv, p, "conv"), x, r_out)
    mat, bias = _conv_matrix(p, shape)
    if name == "flat":  # flat counts the receptive field (padding excluded) per output
        ones = {"weight": np.ones_like(p["weight"])}
        fan = np.asarray(conv(ones, jnp.ones((1, *shape)))).reshape(-1)
        ref = (np.abs(mat) > 0).astype(np.float64) @ (r_out.reshape(-1) / stab(fan))
    else:
        ref = ref_dense(_ref_name(name), x.reshape(-1), mat, bias, r_out.reshape(-1), **kw)
    np.testing.assert_allclose(np.asarray(ours).reshape(-1), ref, rtol=2e-3, atol=2e-4)


def test_norm_rule_splits_sums_in_proportion():
    class Add:
        params = {}
        layers = {"add": Layer("add", "add")}

        def apply(self, params, x, intercept=None):
            return intercept(self.layers["add"], lambda p, a, b: a + b, {}, x, 2.0 * x)

    x = jnp.array([[1.0, -2.0]])
    comp = jaxattr.Composite(layer_map=(("add", jaxattr.rules.norm()),))
    # the summands get x / 3x and 2x / 3x of the relevance; the second then flows back
    # through the (ordinary) gradient of 2 * x: 1/3 + 2 * 2/3 = 5/3
    rel = jaxattr.lrp(Add(), x, composite=comp, target=jnp.ones((1, 2)))
    np.testing.assert_allclose(rel, [[5 / 3, 5 / 3]], rtol=1e-5)


def test_relu_rules():
    z = jnp.array([[-1.0, 2.0, 3.0, -4.0]])
    g = jnp.array([[1.0, -1.0, 2.0, -3.0]])
    model = Seq([("relu", "activation", "ReLU", relu, {})])
    cases = {
        "relu_guided_backprop": (jaxattr.relu_guided_backprop(), [[0.0, 0.0, 2.0, 0.0]]),
        "relu_deconvnet": (jaxattr.rules.relu_deconvnet(), [[1.0, 0.0, 2.0, 0.0]]),
        "pass": (jaxattr.pass_rule(), g),
        "relu_beta_smooth": (jaxattr.relu_beta_smooth(2.0), jax.nn.sigmoid(2.0 * z) * g),
    }
    for name, (rule, expected) in cases.items():
        comp = jaxattr.Composite(layer_map=(("activation", rule),))
        np.testing.assert_allclose(
            jaxattr.lrp(model, z, composite=comp, target=g), expected, rtol=1e-6, err_msg=name
        )


def test_zero_params_removes_the_bias():
    x = RNG.normal(size=(1, 3)).astype(np.float32)
    w = RNG.normal(size=(3, 2)).astype(np.float32)
    b = RNG.normal(size=(2,)).astype(np.float32)
    with_zero = _rel(
        jaxattr.epsilon(0.0, zero_params="bias"),
        one_layer(dense, {"weight": w, "bias": b}),
        x,
        jnp.ones((1, 2)),
    )
    no_bias = _rel(jaxattr.epsilon(0.0), one_layer(dense, {"weight": w}), x, jnp.ones((1, 2)))
    np.testing.assert_allclose(with_zero, no_bias, rtol=1e-5)


def test_alpha_beta_must_differ_by_one():
    with pytest.raises(ValueError, match=r"alpha - beta must equal 1.*alpha=2.*beta=2"):
        jaxattr.alpha_beta(2.0, 2.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        jaxattr.alpha_beta(-1.0, -2.0)


def test_a_new_rule_in_a_few_lines():
    # LRP-0 written by the user: one identity triple, divide by z, multiply by x
    lrp0 = jaxattr.Rule(
        "lrp0", gradient_mapper=lambda g, zs: [g / zs[0]], reducer=lambda xs, gs: xs[0] * gs[0]
    )
    x = RNG.normal(size=(2, 5)).astype(np.float32)
    p = {"weight": RNG.normal(size=(5, 3)).astype(np.float32)}
    np.testing.assert_allclose(
        _rel(lrp0, one_layer(dense, p), x, 1),
        _rel(jaxattr.epsilon(0.0), one_layer(dense, p), x, 1),
        rtol=1e-5,
    )


# --------------------------------------------------------------------------------------
# Conservation, composites, canonizers
# --------------------------------------------------------------------------------------


def bias_free_relu_net(seed=0):
    rng = np.random.default_rng(seed)
    return Seq(
        [
            (
                "fc1",
                "linear",
                "Linear",
                dense,
                {"weight": rng.normal(size=(6, 8)).astype(np.float32)},
            ),
            ("relu1", "activation", "ReLU", relu, {}),
            (
                "fc2",
                "linear",
                "Linear",
                dense,
                {"weight": rng.normal(size=(8, 8)).astype(np.float32)},
            ),
            ("relu2", "activation", "ReLU", relu, {}),
            (
                "fc3",
                "linear",
                "Linear",
                dense,
                {"weight": rng.normal(size=(8, 3)).astype(np.float32)},
            ),
        ]
    )


def test_lrp0_conserves_relevance_on_bias_free_relu_net():
    model = bias_free_relu_net()
    x = RNG.normal(size=(4, 6)).astype(np.float32)
    comp = jaxattr.Composite(
        layer_map=(("activation", jaxattr.pass_rule()), ("linear", jaxattr.epsilon(0.0)))
    )
    rel, delta = jaxattr.lrp(
        model, x, composite=comp, target=1, captum_normalize=True, return_delta=True
    )
    out = np.asarray(model(x))[:, 1]
    np.testing.assert_allclose(np.asarray(rel).sum(1), out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(delta, 0.0, atol=1e-4 * np.abs(out).max())
    # Zennit's convention: relevance 1 on the target, conserved to 1
    rel_z = jaxattr.lrp(model, x, composite=comp, target=1)
    np.testing.assert_allclose(np.asarray(rel_z).sum(1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(rel_z) * out[:, None], rel, rtol=1e-4, atol=1e-6)


def test_composite_first_match_and_first_layer():
    layers = [
        Layer("a", "conv"),
        Layer("r", "activation", "ReLU"),
        Layer("b", "conv"),
        Layer("fc", "linear"),
        Layer("pool", "avg_pool"),
    ]
    comp = jaxattr.epsilon_gamma_box(low=0.0, high=1.0)
    got = {k: r.name for k, r in comp.rules_for(layers).items()}
    assert got == {"a": "z_box", "r": "pass", "b": "gamma", "fc": "epsilon", "pool": "norm"}
    named = jaxattr.Composite(name_map=(("b", jaxattr.rules.flat()),), layer_map=comp.layer_map)
    assert named.rules_for(layers)["b"].name == "flat"
    prefix = jaxattr.Composite(name_map=(("features.", jaxattr.rules.flat()),))
    assert prefix.rules_for([Layer("features.3", "conv"), Layer("fc", "linear")]) == {
        "features.3": jaxattr.rules.flat()
    }
    assert jaxattr.epsilon_plus_flat().rules_for(layers)["a"].name == "flat"
    assert jaxattr.epsilon_plus() is jaxattr.epsilon_plus()  # cached: no recompilation
    with pytest.raises(TypeError, match=r"\(matcher, Rule\) pairs"):
        jaxattr.Composite(layer_map=(("conv", "epsilon"),))


def test_merge_batch_norm_keeps_the_function():
    rng = np.random.default_rng(1)
    c = 3

    def bn(p, x):
        mean, var, weight, bias = (
            _last_axis(p[k], x) for k in ("running_mean", "running_var", "weight", "bias")
        )
        return (x - mean) / jnp.sqrt(var + 1e-5) * weight + bias

    steps = [
        (
            "fc",
            "linear",
            "Linear",
            dense,
            {
                "weight": rng.normal(size=(4, c)).astype(np.float32),
                "bias": rng.normal(size=(c,)).astype(np.float32),
            },
        ),
        (
            "bn",
            "batch_norm",
            "BatchNorm1d",
            bn,
            {
                "running_mean": rng.normal(size=c).astype(np.float32),
                "running_var": rng.uniform(0.5, 2, size=c).astype(np.float32),
                "weight": rng.normal(size=c).astype(np.float32),
                "bias": rng.normal(size=c).astype(np.float32),
            },
        ),
    ]
    model = Seq(steps)
    model.layers["bn"] = Layer("bn", "batch_norm", "BatchNorm1d", attrs={"eps": 1e-5})
    # the torch layout: weight (out, in) -> here dense is x @ w, so transpose via a wrapper
    x = rng.normal(size=(5, 4)).astype(np.float32)
    merged = jaxattr.merge_batch_norm(_torch_layout(model))
    np.testing.assert_allclose(merged(x), model(x), rtol=1e-4, atol=1e-5)
    assert jaxattr.layer_graph(model, x) == {"fc": (None,), "bn": ("fc",)}


def _torch_layout(seq):
    """Wrap a Seq so that its dense weights are stored (out, in) like torch's."""

    class T:
        params = {
            k: ({**p, "weight": p["weight"].T} if "weight" in p and p["weight"].ndim == 2 else p)
            for k, p in seq.params.items()
        }
        layers = seq.layers

        def apply(self, params, x, intercept=None):
            intercept = intercept or jaxattr.structure.default_intercept
            for name, kind, _, fn, _ in seq.steps:
                f = (
                    (lambda q, v, fn=fn: fn({**q, "weight": q["weight"].T}, v))
                    if kind == "linear"
                    else fn
                )
                x = intercept(seq.layers[name], f, params[name], x)
            return x

    return T()


def test_attach_gives_hybrids():
    model = bias_free_relu_net()
    x = RNG.normal(size=(2, 6)).astype(np.float32)
    fn = jaxattr.attach(model, jaxattr.epsilon_plus())
    again = jaxattr.attach(model, jaxattr.epsilon_plus())
    assert partition(again)[0] == partition(fn)[0]  # equal attachments share programs
    np.testing.assert_allclose(fn(x), model(x), rtol=1e-6)
    sg = jaxattr.smoothgrad(fn, x, key=jax.random.key(0), n_iter=3, target=0)
    assert sg.shape == x.shape
    ig = jaxattr.integrated_gradients(fn, x, target=0, n_steps=4)
    assert ig.shape == x.shape


def test_plain_function_guided_backprop_rewrites_relu():
    w1 = jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32)
    w2 = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)
    fn = lambda x: jax.nn.relu(x @ w1) @ w2  # noqa: E731
    x = jnp.asarray(RNG.normal(size=(2, 4)), jnp.float32)
    g = w2[:, 1]
    mask = (x @ w1 > 0).astype(jnp.float32)
    ref = (mask * (g > 0).astype(jnp.float32)[None] * g[None]) @ w1.T
    np.testing.assert_allclose(jaxattr.guided_backprop(fn, x, target=1), ref, rtol=1e-5)
    np.testing.assert_allclose(
        jaxattr.deconvolution(fn, x, target=1),
        jnp.broadcast_to(jnp.maximum(g, 0) @ w1.T, x.shape),
        rtol=1e-5,
    )
    jitted = jax.jit(lambda v: jaxattr.guided_backprop(fn, v, target=1))(x)
    np.testing.assert_allclose(jitted, ref, rtol=1e-5)


def test_excitation_backprop_matches_torchray_definition():
    """TorchRay's rules, written out: p' = x * W+^T (p / (W+ x)) on linear layers."""
    model = bias_free_relu_net(3)
    # its own draw: the module RNG made the input depend on the tests run before it
    x = np.abs(np.random.default_rng(7).normal(size=(1, 6))).astype(np.float32)
    w = [np.asarray(model.params[k]["weight"], np.float64) for k in ("fc1", "fc2", "fc3")]
    a0 = x[0].astype(np.float64)
    a1 = np.maximum(a0 @ w[0], 0)
    a2 = np.maximum(a1 @ w[1], 0)
    p = np.eye(3)[2]

    def back(a, wm, p):
        wp = np.maximum(wm, 0)
        return a * (wp @ (p / (a @ wp + 1e-20)))

    p2 = back(a2, w[2], p) * (a1 @ w[1] > 0)
    p1 = back(a1, w[1], p2) * (a0 @ w[0] > 0)
    p0 = back(a0, w[0], p1)
    ours = jaxattr.excitation_backprop(model, x, target=2, sum_channels=False)
    np.testing.assert_allclose(ours[0], p0, rtol=1e-4, atol=1e-7)
    summed = jaxattr.excitation_backprop(model, x, target=2)
    np.testing.assert_allclose(summed[0, 0], p0.sum(), rtol=1e-4)
    # contrastive: the contrast at relu2's output comes from the flipped classifier
    diff = back(a2, w[2], p) - back(a2, -w[2], p)
    q1 = back(a1, w[1], diff * (a1 @ w[1] > 0)) * (a0 @ w[0] > 0)
    q0 = back(a0, w[0], q1)
    ours_c = jaxattr.contrastive_excitation_backprop(
        model, x, target=2, contrast_layer="relu2", sum_channels=False
    )
    np.testing.assert_allclose(ours_c[0], np.maximum(q0, 0), rtol=1e-4, atol=1e-7)
    ours_s = jaxattr.contrastive_excitation_backprop(model, x, target=2, contrast_layer="relu2")
    # both passes carry the target's relevance (p0.sum(), ~1), so the sum cancels to ~0
    # and float32 leaves rounding of that size (1e-7 absolute failed 22 of 200 draws)
    tol = 1e-6 * abs(p0.sum())
    np.testing.assert_allclose(ours_s[0, 0], max(q0.sum(), 0.0), rtol=1e-4, atol=tol)


# --------------------------------------------------------------------------------------
# Flax
# --------------------------------------------------------------------------------------


def _eps_chain(ws, bs, x, r_out, eps=1e-6):
    """Slow epsilon-LRP through dense -> relu -> dense (relu: pass)."""
    h = np.maximum(x @ ws[0] + bs[0], 0)
    r_h = ref_dense("epsilon", h, ws[1], bs[1], r_out, epsilon=eps)
    return ref_dense("epsilon", x, ws[0], bs[0], r_h, epsilon=eps)


def test_rules_on_flax_linen_model():
    import flax.linen as nn

    from jaxattr.flax import from_linen

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="fc2")(nn.relu(nn.Dense(5, name="fc1")(x)))

    net = Net()
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    variables = net.init(jax.random.key(0), x)
    model = from_linen(net, variables)
    rel = jaxattr.lrp(model, x, composite=jaxattr.epsilon_plus(), target=2)
    assert list(model.layers) == ["fc1", "fc2"]
    p = variables["params"]
    ws = [np.asarray(p["fc1"]["kernel"]), np.asarray(p["fc2"]["kernel"])]
    bs = [np.asarray(p["fc1"]["bias"]), np.asarray(p["fc2"]["bias"])]
    for n in range(2):
        np.testing.assert_allclose(
            rel[n], _eps_chain(ws, bs, x[n], np.eye(3)[2]), rtol=1e-4, atol=1e-6
        )
    gb = jaxattr.guided_backprop(model, x, target=2)
    assert gb.shape == x.shape


def test_rules_on_flax_nnx_model_with_batch_norm():
    from flax import nnx

    from jaxattr.flax import from_nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs, use_running_average=True)
            self.fc = nnx.Linear(3 * 4 * 4, 2, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.conv(x)))
            return self.fc(h.reshape(h.shape[0], -1))

    net = Net(nnx.Rngs(0))
    net.bn.mean.set_value(jnp.asarray(RNG.normal(size=3), jnp.float32))
    net.bn.var.set_value(jnp.asarray(RNG.uniform(0.5, 2, size=3), jnp.float32))
    x = RNG.normal(size=(2, 4, 4, 2)).astype(np.float32)
    model = from_nnx(net)
    y = np.asarray(net(x))
    np.testing.assert_allclose(model(x), y, rtol=1e-5)
    merged = jaxattr.merge_batch_norm(model)
    np.testing.assert_allclose(merged(x), y, rtol=1e-4, atol=1e-5)
    comp = jaxattr.Composite(
        layer_map=(("batch_norm", jaxattr.pass_rule()), (("conv", "linear"), jaxattr.epsilon(0.0)))
    )
    rel, delta = jaxattr.lrp(
        merged, x, composite=comp, target=0, captum_normalize=True, return_delta=True
    )
    assert rel.shape == x.shape and list(model.layers) == ["conv", "bn", "fc"]
    # with the batch norm merged into the conv, LRP-0 conserves up to the biases' share
    assert np.all(np.isfinite(np.asarray(delta)))
    # merged conv + epsilon equals the slow reference on the explicit merged matrix
    assert net.bn.mean.get_value().shape == (3,)  # the model itself is untouched


def test_flax_residual_sum_declared_as_a_layer():
    import flax.linen as nn

    from jaxattr.flax import from_linen

    class Add(nn.Module):
        jaxattr_kind = "add"

        def __call__(self, *xs):
            return sum(xs)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(4, name="fc")(x))
            return nn.Dense(2, name="out")(Add(name="add")(h, x))

    net = Block()
    x = np.abs(RNG.normal(size=(2, 4))).astype(np.float32)
    model = from_linen(net, net.init(jax.random.key(1), x))
    comp = jaxattr.epsilon_plus(epsilon=0.0)
    rel, delta = jaxattr.lrp(model, x, composite=comp, target=0, return_delta=True)
    assert list(model.layers) == ["fc", "add", "out"]
    assert comp.rules_for(model.layers)["add"].name == "norm"
    assert rel.shape == x.shape and np.all(np.isfinite(np.asarray(delta)))


def test_deep_lift_on_flax_model_finds_activations_in_the_jaxpr():
    import flax.linen as nn

    from jaxattr.flax import from_linen

    net = nn.Sequential([nn.Dense(5), nn.relu, nn.Dense(4), nn.tanh, nn.Dense(2)])
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    base = RNG.normal(size=(1, 4)).astype(np.float32)
    variables = net.init(jax.random.key(2), x)
    model = from_linen(net, variables)
    attr, delta = jaxattr.deep_lift(model, x, baselines=base, target=1, return_delta=True)
    np.testing.assert_allclose(delta, 0.0, atol=1e-5)  # rescale rule: complete
    plain = jaxattr.deep_lift(lambda v: net.apply(variables, v), x, baselines=base, target=1)
    np.testing.assert_allclose(attr, plain, rtol=1e-5, atol=1e-7)
    grad_x_diff = jaxattr.gradient(lambda v: net.apply(variables, v), x, target=1) * (x - base)
    assert not np.allclose(attr, grad_x_diff, rtol=1e-3)  # the rules did take effect
