"""jaxattr.influence against captum.influence on the same tiny MLP, checkpoints and data.

The torch MLP (Linear 5->8, ReLU, Linear 8->3) is mirrored as a plain JAX function with
the same state-dict weights (TracInCP) and converted with ``jaxattr.bridge.from_torch``
(layer names for TracInCPFast and SimilarityInfluence). Three checkpoints with learning
rates 0.5, 1 and 2; 16 training and 8 test examples in batches of 8 (one batch shape, so
one compiled program per method: the suite stays fast).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from captum.influence import (
    NaiveInfluenceFunction as CNaive,
)
from captum.influence import (
    SimilarityInfluence as CSimilarity,
)
from captum.influence import (
    TracInCP as CTracInCP,
)
from captum.influence import (
    TracInCPFast as CTracInCPFast,
)
from captum.influence import (
    TracInCPFastRandProj as CRandProj,
)
from captum.influence._utils.nearest_neighbors import NearestNeighbors
from torch.utils.data import TensorDataset

from jaxattr import influence
from tests.helpers import linear

RTOL = 1e-4
LRS = [0.5, 1.0, 2.0]


def close(ours, ref, rtol=RTOL):
    ours = np.asarray(ours)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)
    err = float(np.max(np.abs(ours - ref)) / scale)
    print(f"parity: max |ours - captum| / max |captum| = {err:.1e}")
    return err


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = _mlp()
    states = []
    for seed in range(3):
        torch.manual_seed(seed + 10)
        states.append({k: v.clone() for k, v in _mlp().state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    xt = rng.normal(size=(8, 5)).astype(np.float32)
    yt = rng.integers(0, 3, size=8)
    ckpts = [
        {**{k: v.numpy() for k, v in sd.items()}, "learning_rate": lr}
        for sd, lr in zip(states, LRS, strict=True)
    ]
    return net, states, x, y, xt, yt, ckpts


@pytest.fixture(scope="module")
def converted(setup):
    from jaxattr import bridge

    net = setup[0]
    return bridge.from_torch(net, torch.randn(2, 5))


def mlp_jax(p, x):
    h = jax.nn.relu(linear(x, p["0.weight"], p["0.bias"]))
    return linear(h, p["2.weight"], p["2.bias"])


def features_jax(p, x):
    return jax.nn.relu(linear(x, p["0.weight"], p["0.bias"]))


def ce(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


def ce_mean(out, y):
    return ce(out, y).mean()


ce_mean.reduction = "mean"


def loader(states):
    def load(model, i):
        model.load_state_dict(states[i])
        return LRS[i]

    return load


def captum_tracin(setup, cls=CTracInCP, **kw):
    net, states, x, y, *_ = setup
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return cls(
        net,
        train_dataset=ds,
        checkpoints=[0, 1, 2],
        checkpoints_load_func=loader(states),
        batch_size=8,
        **kw,
    )


def test_tracincp(setup):
    """Self influence, influence scores (per example and aggregated), proponents and
    opponents, intermediate quantities: one Captum instance, per-example loss."""
    *_, x, y, xt, yt, ckpts = setup
    ref = captum_tracin(setup, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
    ours = influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce, batch_size=8)
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    r_self = ref.self_influence()
    close(ours.self_influence(), r_self)
    close(ours.self_influence(outer_loop_by_checkpoints=True, show_progress=True), r_self)
    close(ours.self_influence([(x[:8], y[:8]), (x[8:], y[8:])]), r_self)  # batches
    close(ours.self_influence((xt, yt)), ref.self_influence(test))
    close(ours.influence((xt, yt), show_progress=True), ref.influence(test))
    close(ours.influence((xt, yt), aggregate=True), ref.influence(test, aggregate=True))
    for proponents in (True, False):
        r = ref.influence(test, k=3, proponents=proponents)
        o = ours.influence((xt, yt), k=3, proponents=proponents)
        np.testing.assert_array_equal(np.asarray(o.indices), r.indices.numpy())
        close(o.influence_scores, r.influence_scores)
    # the intermediate quantities: the same Gram matrix (leaf order may differ from torch's)
    q = ours.compute_intermediate_quantities((xt, yt))
    rq = ref.compute_intermediate_quantities(test)
    close(q @ q.T, rq @ rq.T)


def test_tracincp_sample_wise_trick(setup):
    """Captum's batched trick with a batch-mean loss gives per-example gradients too."""
    *_, x, y, xt, yt, ckpts = setup
    ref = captum_tracin(
        setup,
        loss_fn=torch.nn.CrossEntropyLoss(reduction="mean"),
        sample_wise_grads_per_batch=True,
    )
    ours = influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce_mean, batch_size=8)
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    close(ours.influence((xt, yt)), ref.influence(test))


def test_tracincp_layers_and_test_loss(setup, converted):
    """Gradients of one layer's parameters; a separate test loss (one logit); a
    structured (bridged) model gives the same scores as the plain function."""
    *_, x, y, xt, yt, ckpts = setup

    def logit0(out, y):
        return out[:, 0]

    ref = captum_tracin(
        setup,
        layers=["2"],
        loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
        test_loss_fn=lambda out, y: out[:, 0],
    )
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    r = ref.influence(test)
    ours = influence.TracInCP(
        mlp_jax, (x, y), ckpts, layers=["2"], loss_fn=ce, test_loss_fn=logit0, batch_size=8
    )
    close(ours.influence((xt, yt)), r)
    bridged = influence.TracInCP(
        converted, (x, y), ckpts, layers=["2"], loss_fn=ce, test_loss_fn=logit0, batch_size=8
    )
    close(bridged.influence((xt, yt)), r)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_tracincp_fast(setup, converted, reduction):
    """Last-layer TracIn: a layer name of the bridged model (sum loss) and a features
    function of the plain model (mean loss, times the batch size as in Captum)."""
    *_, x, y, xt, yt, ckpts = setup
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    ref = captum_tracin(
        setup,
        cls=CTracInCPFast,
        final_fc_layer="2",
        loss_fn=torch.nn.CrossEntropyLoss(reduction=reduction),
    )
    model, layer, loss = (
        (converted, "2", ce) if reduction == "sum" else (mlp_jax, features_jax, ce_mean)
    )
    ours = influence.TracInCPFast(model, layer, (x, y), ckpts, loss_fn=loss, batch_size=8)
    close(ours.self_influence(), ref.self_influence())
    close(ours.influence((xt, yt)), ref.influence(test))
    r = ref.influence(test, k=4, proponents=False)
    o = ours.influence((xt, yt), k=4, proponents=False)
    np.testing.assert_array_equal(np.asarray(o.indices), r.indices.numpy())
    close(o.influence_scores, r.influence_scores)


class ExactNN(NearestNeighbors):
    """Exact inner-product neighbours (Annoy is not installed, and is approximate)."""

    def setup(self, data):
        self.data = data.reshape(data.shape[0], -1)

    def get_nearest_neighbors(self, query, k):
        scores = query.reshape(query.shape[0], -1) @ self.data.T
        vals, idx = torch.topk(scores, k, dim=1)
        return idx, vals


def test_tracincp_fast_rand_proj(setup, converted):
    """Captum's drawn projection matrices injected: the same vectors, scores, neighbours."""
    projection_dim = 4
    *_, x, y, xt, yt, ckpts = setup
    ref = captum_tracin(
        setup,
        cls=CRandProj,
        final_fc_layer="2",
        loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
        nearest_neighbors=ExactNN(),
        projection_dim=projection_dim,
    )
    proj = tuple(p.numpy() for p in ref.projection_quantities)
    ours = influence.TracInCPFastRandProj(
        converted,
        "2",
        (x, y),
        ckpts,
        loss_fn=ce,
        batch_size=8,
        projection_dim=projection_dim,
        projection_quantities=proj,
    )
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    close(ours.influence((xt, yt), k=None), ref.influence(test, k=None))
    for proponents in (True, False):
        r = ref.influence(test, k=3, proponents=proponents)
        o = ours.influence((xt, yt), k=3, proponents=proponents)
        np.testing.assert_array_equal(np.asarray(o.indices), r.indices.numpy())
        close(o.influence_scores, r.influence_scores)
    drawn = influence.TracInCPFastRandProj(  # drawn projections have Captum's shapes
        converted, "2", (x, y), ckpts, loss_fn=ce, batch_size=8, projection_dim=4, seed=1
    )
    assert [p.shape for p in drawn.projection_quantities] == [(3, 2), (8, 2)]
    with pytest.raises(NotImplementedError, match="TracInCPFast"):
        ours.self_influence()


@pytest.mark.parametrize("metric, direction", [("cosine", "max"), ("euclidean", "min")])
def test_similarity_influence(setup, converted, tmp_path, metric, direction):
    _, _, x, _, xt, _, _ = setup
    from captum.influence._core.similarity_influence import euclidean_distance

    net = _mlp()  # the TracIn tests load checkpoints into the fixture's net
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in converted.params.items()})

    kw = {} if metric == "cosine" else {"similarity_metric": euclidean_distance}
    ref = CSimilarity(
        net,
        ["0", "2"],
        torch.from_numpy(x),
        str(tmp_path),
        batch_size=8,
        similarity_direction=direction,
        **kw,
    ).influence(torch.from_numpy(xt), top_k=3)
    jkw = {} if metric == "cosine" else {"similarity_metric": influence.euclidean_distance}
    ours = influence.SimilarityInfluence(
        converted, ["0", "2"], x, batch_size=8, similarity_direction=direction, **jkw
    ).influence(xt, top_k=3)
    for layer in ("0", "2"):
        np.testing.assert_array_equal(np.asarray(ours[layer][0]), ref[layer][0].numpy())
        close(ours[layer][1], ref[layer][1])


def test_cosine_zero_vectors():
    """A zero activation vector normalises to ``replace_nan`` entries, as in Captum."""
    from captum.influence._core.similarity_influence import cosine_similarity

    a = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    b = np.array([[0.0, 0.0], [3.0, -1.0], [1.0, 1.0]], np.float32)
    ref = cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), replace_nan=-2)
    close(influence.cosine_similarity(a, b, replace_nan=-2), ref)


def captum_if(setup, cls, **kw):
    net, states, x, y, *_ = setup
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return cls(
        net,
        train_dataset=ds,
        checkpoint=1,
        checkpoints_load_func=loader(states),
        loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
        batch_size=8,
        **kw,
    )


def test_naive_influence_function(setup):
    """Exact Hessian (jax.hessian), its top eigenvectors, g^T H^-1 g: as Captum."""
    *_, x, y, xt, yt, ckpts = setup
    ref = captum_if(setup, CNaive, projection_dim=8)
    ours = influence.NaiveInfluenceFunction(
        mlp_jax, (x, y), ckpts[1], loss_fn=ce, batch_size=8, projection_dim=8
    )
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    close(ours.influence((xt, yt)), ref.influence(test))
    close(ours.self_influence(), ref.self_influence())
    r = ref.influence(test, k=3)
    o = ours.influence((xt, yt), k=3)
    np.testing.assert_array_equal(np.asarray(o.indices), r.indices.numpy())


def test_arnoldi_influence_function(setup):
    """Arnoldi iteration with Hessian-vector products from Captum's start vector."""
    from captum.influence._core.arnoldi_influence_function import (
        ArnoldiInfluenceFunction as CArnoldi,
    )

    net, states, x, y, xt, yt, ckpts = setup
    ref = captum_if(setup, CArnoldi, projection_dim=4, arnoldi_dim=12, seed=0)
    net.load_state_dict(states[1])
    torch.manual_seed(0)  # Captum's start vector: randn_like of each parameter, in order
    start = {n: torch.randn_like(p).numpy() for n, p in net.named_parameters()}
    ours = influence.ArnoldiInfluenceFunction(
        mlp_jax,
        (x, y),
        ckpts[1],
        loss_fn=ce,
        batch_size=8,
        projection_dim=4,
        arnoldi_dim=12,
        arnoldi_start=start,
    )
    test = (torch.from_numpy(xt), torch.from_numpy(yt))
    close(ours.influence((xt, yt)), ref.influence(test))
    close(ours.self_influence(), ref.self_influence())


def test_errors(setup):
    *_, x, y, xt, yt, ckpts = setup
    with pytest.raises(TypeError, match="re-iterable"):
        influence.TracInCP(mlp_jax, iter([(x, y)]), ckpts, loss_fn=ce)
    with pytest.raises(ValueError, match="labels last"):
        influence.TracInCP(mlp_jax, (x,), ckpts, loss_fn=ce)
    with pytest.raises(ValueError, match="same number of examples"):
        influence.TracInCP(mlp_jax, (x, y[:3]), ckpts, loss_fn=ce)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        influence.TracInCP(mlp_jax, (x, y), [], loss_fn=ce)
    with pytest.raises(ValueError, match="layers: 'fc'"):
        influence.TracInCP(mlp_jax, (x, y), ckpts, layers=["fc"], loss_fn=ce)
    with pytest.raises(ValueError, match="k must be >= 1"):
        influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce).influence((xt, yt), k=0)
    with pytest.raises(TypeError, match="loss_fn is required"):
        influence.TracInCPFast(mlp_jax, features_jax, (x, y), ckpts)
    with pytest.raises(TypeError, match="structured model"):
        influence.TracInCPFast(mlp_jax, "2", (x, y), ckpts, loss_fn=ce)
    with pytest.raises(ValueError, match="projection_quantities must have shapes"):
        influence.TracInCPFastRandProj(
            mlp_jax,
            features_jax,
            (x, y),
            ckpts,
            loss_fn=ce,
            projection_quantities=(np.ones((2, 2)), np.ones((8, 2))),
        )


def test_jit_composes(setup):
    """The per-example gradient programs take checkpoints as arguments: one compile."""
    *_, x, y, xt, yt, ckpts = setup
    ours = influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce, batch_size=8)
    ours.self_influence()
    n = ours._train.self_influence._cache_size()
    assert n == 1  # one program for three checkpoints
    ours.self_influence()
    assert ours._train.self_influence._cache_size() == n  # no new program
    again = influence.TracInCP(mlp_jax, (x, y), ckpts[::-1], loss_fn=ce, batch_size=8)
    again.self_influence()  # another instance, other weights: the same programs
    assert again._train.self_influence._cache_size() == n
    assert jnp.isfinite(ours.self_influence()).all()


# --------------------------------------------------------------------------------------
# mesh=: sharded over 8 forced CPU devices equals unsharded
# --------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The device count is fixed when jax starts, and this pytest process already started jax
# with one CPU device: the sharded runs are subprocesses (XLA flags are never set here).
SHARD_SETUP = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh
    from jaxattr import influence

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    rng = np.random.default_rng(0)
    N, NT = 21, 7  # training and test examples: neither a multiple of 8
    x = rng.normal(size=(N, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=N)
    # the first test example is the last training example: the padding of the last training
    # batch (its copies) would be its top proponents if it were not dropped
    xt = np.concatenate([x[-1:], rng.normal(size=(NT - 1, 5)).astype(np.float32)])
    yt = np.concatenate([y[-1:], rng.integers(0, 3, size=NT - 1)])
    test = (xt, yt)
    ckpts = [
        {"w1": rng.normal(size=(5, 8)).astype(np.float32), "b1": np.zeros(8, np.float32),
         "w2": rng.normal(size=(8, 3)).astype(np.float32), "learning_rate": lr}
        for lr in (0.5, 1.0, 2.0)
    ]
    feats = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"].reshape((1,) * (x.ndim - 1) + (-1,)))
    mlp = lambda p, x: feats(p, x) @ p["w2"]
    loss = optax.softmax_cross_entropy_with_integer_labels
    placed = []  # (examples, padded rows, devices) of every batch the sharded instances place

    def spy(obj):
        put = obj._placement.put
        def recording(batch):
            out, n = put(batch)
            placed.append((n, out[0].shape[0], len(out[0].sharding.device_set)))
            return out, n
        obj._placement.put = recording
        return obj

    def both(cls, *args, **kw):  # unsharded and (spied) sharded instances
        return cls(*args, **kw), spy(cls(*args, **kw, mesh=mesh))

    def check_placed(need):
        assert {n for n, _, _ in placed} >= need, placed  # the short batches were padded
        assert all(r % 8 == 0 and r - n < 8 and d == 8 for n, r, d in placed), placed
        placed.clear()

    def close(a, b, what):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (what, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=what)

    def same_top(a, b, what):
        ia = np.asarray(a.indices)
        assert ia.min() >= 0 and ia.max() < N, (what, ia)  # never a padded example
        assert all(len(set(r)) == len(r) for r in ia.tolist()), (what, ia)  # nor a copy
        np.testing.assert_array_equal(ia, np.asarray(b.indices), err_msg=what)
        close(a.influence_scores, b.influence_scores, what)
    """
)

SHARDED_TRACIN = textwrap.dedent(
    """
    # batches of 8, 8 and 5 training examples (the 5 padded to 8), 7 test examples
    one = influence.TracInCP(mlp, (x, y), ckpts, loss_fn=loss, batch_size=8)
    many = spy(influence.TracInCP(mlp, (x, y), ckpts, loss_fn=loss, batch_size=8, mesh=mesh))
    close(many.self_influence(), one.self_influence(), "self_influence")
    close(many.influence(test), one.influence(test), "influence")
    for proponents in (True, False):
        same_top(many.influence(test, k=3, proponents=proponents),
                 one.influence(test, k=3, proponents=proponents), f"k=3 {proponents}")
    assert int(many.influence(test, k=1).indices[0, 0]) == N - 1  # itself, not a copy
    q = many.compute_intermediate_quantities(test)
    close(q, one.compute_intermediate_quantities(test), "intermediate quantities")
    close(many.compute_intermediate_quantities(test, aggregate=True),
          one.compute_intermediate_quantities(test, aggregate=True), "aggregate")
    assert len(q.sharding.device_set) == 8, q.sharding
    check_placed({5, 7})
    print("OK")
    """
)

SHARDED_OTHERS = {
    "fast": textwrap.dedent(
        """
        # TracInCPFast with a batch-mean loss: the padded batch size must not leak into it
        def mean_loss(out, y):
            return loss(out, y).mean()
        mean_loss.reduction = "mean"
        one, many = both(influence.TracInCPFast, mlp, feats, (x, y), ckpts, loss_fn=mean_loss,
                         batch_size=8)
        close(many.self_influence(), one.self_influence(), "Fast self_influence")
        close(many.influence(test), one.influence(test), "Fast influence")
        same_top(many.influence(test, k=3), one.influence(test, k=3), "Fast k=3")
        check_placed({5, 7})

        # TracInCPFastRandProj: the stored training vectors are the real examples only
        one, many = both(influence.TracInCPFastRandProj, mlp, feats, (x, y), ckpts, loss_fn=loss,
                         batch_size=8, projection_dim=4)
        close(many.src_intermediate_quantities, one.src_intermediate_quantities, "RandProj vectors")
        same_top(many.influence(test, k=3, proponents=False),
                 one.influence(test, k=3, proponents=False), "RandProj k=3")
        check_placed({7})
        print("OK")
        """
    ),
    "functions_and_similarity": textwrap.dedent(
        """
        # NaiveInfluenceFunction: embeddings sharded (the Hessian stays on one device)
        p1 = {k: v for k, v in ckpts[1].items() if k != "learning_rate"}
        one, many = both(influence.NaiveInfluenceFunction, mlp, (x, y), p1, loss_fn=loss,
                         batch_size=8, projection_dim=10, hessian_dataset=(x[:8], y[:8]))
        close(many.self_influence(), one.self_influence(), "Naive self_influence")
        close(many.influence(test), one.influence(test), "Naive influence")
        same_top(many.influence(test, k=3), one.influence(test, k=3), "Naive k=3")
        check_placed({5, 7})

        # SimilarityInfluence on a structured model: source batches and inputs sharded
        from jaxattr.structure import Layer, default_intercept

        class MLP:
            params = {k: v for k, v in ckpts[0].items() if k != "learning_rate"}
            layers = {"hidden": Layer("hidden", "linear"), "out": Layer("out", "linear")}

            def apply(self, params, x, intercept=default_intercept):
                hidden = lambda q, v: jnp.tanh(v @ q["w"] + q["b"][None])
                h = intercept(self.layers["hidden"], hidden,
                              {"w": params["w1"], "b": params["b1"]}, x)
                out = lambda q, v: v @ q["w"]
                return intercept(self.layers["out"], out, {"w": params["w2"]}, h)

        model = MLP()
        one, many = both(influence.SimilarityInfluence, model, ["hidden", "out"], x,
                         batch_size=8)
        a, b = many.influence(xt, top_k=3), one.influence(xt, top_k=3)
        for layer in ("hidden", "out"):
            same_top(influence.KMostInfluentialResults(*a[layer]),
                     influence.KMostInfluentialResults(*b[layer]), "Similarity " + layer)
        check_placed({5, 7})
        print("OK")
        """
    ),
}


def _on_8_devices(script):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", SHARD_SETUP + script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_tracincp_sharded_over_8_devices_equals_unsharded():
    """TracInCP with mesh= over 8 devices: self influence, influence (all scores, k=3
    proponents and opponents) and intermediate quantities equal mesh=None within 1e-5;
    21 training examples in batches of 8, 8, 5 and 7 test examples (padded to 8), and
    no top-k index points at a padded example."""
    _on_8_devices(SHARDED_TRACIN)


@pytest.mark.parametrize("which", sorted(SHARDED_OTHERS))
def test_other_classes_sharded_over_8_devices_equal_unsharded(which):
    """TracInCPFast (a batch-mean loss) and TracInCPFastRandProj; NaiveInfluenceFunction
    and SimilarityInfluence: with mesh= over 8 devices they equal mesh=None."""
    _on_8_devices(SHARDED_OTHERS[which])


def test_mesh_is_checked_and_a_one_device_mesh_changes_nothing(setup):
    *_, x, y, xt, yt, ckpts = setup
    for make in (
        lambda m: influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce, mesh=m),
        lambda m: influence.TracInCPFast(mlp_jax, features_jax, (x, y), ckpts, loss_fn=ce, mesh=m),
        lambda m: influence.NaiveInfluenceFunction(mlp_jax, (x, y), ckpts[1], loss_fn=ce, mesh=m),
    ):
        with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh or None, got str"):
            make("batch")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh or None, got list"):
        influence.SimilarityInfluence(lambda p, x: x, "fc", x, mesh=jax.devices())
    one = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("batch",))
    ref = influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce, batch_size=8)
    ours = influence.TracInCP(mlp_jax, (x, y), ckpts, loss_fn=ce, batch_size=8, mesh=one)
    np.testing.assert_allclose(ours.self_influence(), ref.self_influence(), rtol=1e-6)
    np.testing.assert_allclose(ours.influence((xt, yt)), ref.influence((xt, yt)), rtol=1e-6)
