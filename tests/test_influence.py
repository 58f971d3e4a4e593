"""jaxattr.influence against captum.influence on the same tiny MLP, checkpoints and data.

The torch MLP (Linear 5->8, ReLU, Linear 8->3) is mirrored as a plain JAX function with
the same state-dict weights (TracInCP) and converted with ``jaxattr.bridge.from_torch``
(layer names for TracInCPFast and SimilarityInfluence). Three checkpoints with learning
rates 0.5, 1 and 2; 16 training and 8 test examples in batches of 8 (one batch shape, so
one compiled program per method: the suite stays fast).
"""

from __future__ import annotations

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
    h = jax.nn.relu(x @ p["0.weight"].T + p["0.bias"])
    return h @ p["2.weight"].T + p["2.bias"]


def features_jax(p, x):
    return jax.nn.relu(x @ p["0.weight"].T + p["0.bias"])


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
