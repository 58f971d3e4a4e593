"""jaxattr.metrics against Quantus 0.6.0's own metric classes.

Both sides see the same model, inputs, attributions and noise:

- the model: a small JAX MLP, handed to Quantus as a torch module that calls it
  (``JaxModule``), so predictions are the same floats and only the metric logic is
  compared; a torch CNN with a hand-written JAX twin for the metrics that reach into torch
  modules (model parameter randomisation, input invariance) and for one faithfulness
  metric on a real torch model;
- explanations: Quantus's ``explain_func`` calls the same jaxattr method;
- randomness: Quantus draws from numpy's global generator; the tests replace the numpy
  function it calls (``np.random.choice``, ``uniform``, ``normal``, ``randint``,
  ``randn``) by one returning jaxattr's draws for the same key, in Quantus's call order.

Quantus normalises by the maximum over the whole batch by default; the tests pass
``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}`` (per example, jaxattr's
normalisation). numpy 2 removed ``np.trapz`` and ``np.NaN``, which Quantus 0.6.0 calls:
the fixture below restores them as aliases.

Tolerances: 1e-5 absolute on scores (float32 models; the larger differences are float
rounding amplified by ratios), exact equality on booleans, counts and class decisions.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import tests.conftest  # noqa: F401 - torchvision stub before quantus imports zennit

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxattr  # noqa: E402
from jaxattr import _quantus_faithfulness as qf  # noqa: E402
from jaxattr import metrics  # noqa: E402
from tests.helpers import linear  # noqa: E402

ATOL = 1e-5
PER_EXAMPLE = {"normalise_axes": (1, 2, 3)}
QKW = {"disable_warnings": True, "normalise_func_kwargs": PER_EXAMPLE}


@pytest.fixture(autouse=True)
def _numpy2_aliases(monkeypatch):
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)


class JaxModule(torch.nn.Module):
    """A torch module whose forward is a JAX function (Quantus's model callback)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = jax.jit(fn)

    def forward(self, x):
        return torch.from_numpy(np.array(self.fn(jnp.asarray(x.detach().cpu().numpy()))))


def mlp(c, h, w, k=3, seed=0):
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(c * h * w, 16)).astype(np.float32) / np.sqrt(c * h * w))
    w2 = jnp.asarray(rng.normal(size=(16, k)).astype(np.float32))

    def fn(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2

    return fn


RNG = np.random.default_rng(1)
# one channel (ROAD and IROF only work on one channel in Quantus) and three channels
FN1 = mlp(1, 6, 7)
X1 = RNG.uniform(size=(3, 1, 6, 7)).astype(np.float32)
A1 = RNG.normal(size=(3, 1, 6, 7)).astype(np.float32)
FN3 = mlp(3, 6, 7)
X3 = RNG.uniform(size=(3, 3, 6, 7)).astype(np.float32)
A3 = RNG.normal(size=(3, 1, 6, 7)).astype(np.float32)  # broadcast over the channels
Y = np.array([0, 1, 2])


def run(metric, fn, x, a, **kwargs):
    return np.asarray(
        metric(model=JaxModule(fn).eval(), x_batch=x, y_batch=Y, a_batch=a, **kwargs),
        dtype=np.float64,
    )


def explainer(fn, method=jaxattr.gradient):
    def explain(model, inputs, targets, **kwargs):
        return np.asarray(method(fn, jnp.asarray(inputs), target=jnp.asarray(targets)))

    return explain


class Replay:
    """Stand-in for a numpy random function: returns given arrays in call order."""

    def __init__(self, draws):
        self.draws = [np.asarray(d) for d in draws]
        self.calls = 0

    def __call__(self, *args, size=None, **kwargs):
        out = self.draws[self.calls]
        self.calls += 1
        return out.reshape(size).astype(np.float64) if size is not None else out


# --------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------


def test_faithfulness_correlation_with_the_same_subsets(monkeypatch):
    key = jax.random.key(3)
    idx = np.asarray(qf._subsets(jax.random.split(key, 3)[0], 10, 3, 3 * 6 * 7, 20))
    replay = Replay(list(idx.reshape(-1, 20)))
    monkeypatch.setattr(np.random, "choice", replay)
    ref = run(
        quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=20, return_aggregate=False, **QKW),
        FN3,
        X3,
        A3,
    )
    assert replay.calls == 30
    ours = metrics.faithfulness_correlation(
        FN3, X3, A3, target=Y, nr_runs=10, subset_size=20, key=key, return_aggregate=False
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("baseline", ["mean"])  # more in tests/peer
def test_faithfulness_estimate(baseline):
    ref = run(
        quantus.FaithfulnessEstimate(features_in_step=3, perturb_baseline=baseline, **QKW),
        FN3,
        X3,
        A3,
    )
    ours = metrics.faithfulness_estimate(
        FN3, X3, A3, target=Y, features_in_step=3, perturb_baseline=baseline
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_monotonicity_restores_features_where_quantus_restores_none():
    # Quantus's default perturb_func writes the baseline into the all-baseline array, so
    # every example is "monotonic"; with a perturb_func that writes x's values it computes
    # the paper's metric, which is jaxattr's.
    flat = X3.reshape(3, -1)

    def restore(arr, indices, **kwargs):
        out = arr.copy()
        rows = np.arange(len(arr))[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    fn = mlp(3, 6, 7, k=3, seed=4)
    a = np.stack(
        [np.asarray(jaxattr.input_x_gradient(fn, X3, target=int(t)))[i] for i, t in enumerate(Y)]
    )
    ref = run(
        quantus.Monotonicity(features_in_step=6, perturb_func=restore, **QKW),
        fn,
        X3,
        a,
        softmax=False,
    )
    degenerate = run(quantus.Monotonicity(features_in_step=6, **QKW), fn, X3, a, softmax=False)
    ours = metrics.monotonicity(fn, X3, a, target=Y, features_in_step=6, softmax=False)
    np.testing.assert_array_equal(ours, ref.astype(bool))
    assert degenerate.all() and not np.asarray(ours).all()


def test_monotonicity_is_true_for_a_monotone_model():
    w = jnp.array([1.0, 2.0, 3.0, 4.0])
    fn = lambda x: jnp.stack([x @ w, -(x @ w)], 1)  # noqa: E731
    x = jnp.ones((2, 4))
    out = metrics.monotonicity(
        fn, x, x * w[None], target=np.array([0, 1]), perturb_baseline=0.0, softmax=False
    )
    np.testing.assert_array_equal(out, [True, False])


def test_monotonicity_correlation_with_the_same_uniform_draws(monkeypatch):
    key = jax.random.key(5)
    steps = 3 * 6 * 7 // 21
    draws = jax.random.uniform(jax.random.split(key)[0], (steps, 4, 3))
    monkeypatch.setattr(np.random, "uniform", Replay(list(np.asarray(draws).reshape(-1, 3))))
    ref = run(
        quantus.MonotonicityCorrelation(features_in_step=21, nr_samples=4, **QKW), FN3, X3, A3
    )
    ours = metrics.monotonicity_correlation(
        FN3, X3, A3, target=Y, features_in_step=21, nr_samples=4, key=key
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("baseline", ["mean"])
def test_pixel_flipping(baseline):
    ref = run(
        quantus.PixelFlipping(features_in_step=6, perturb_baseline=baseline, **QKW), FN3, X3, A3
    )
    ours = metrics.pixel_flipping(
        FN3, X3, A3, target=Y, features_in_step=6, perturb_baseline=baseline
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_pixel_flipping_auc_and_uniform_draws(monkeypatch):
    key = jax.random.key(2)
    steps = 3 * 6 * 7 // 21
    draws = jax.random.uniform(jax.random.split(key)[0], (steps, 3))
    monkeypatch.setattr(np.random, "uniform", Replay(list(np.asarray(draws))))
    ref = run(
        quantus.PixelFlipping(
            features_in_step=21, perturb_baseline="uniform", return_auc_per_sample=True, **QKW
        ),
        FN3,
        X3,
        A3,
    )
    ours = metrics.pixel_flipping(
        FN3,
        X3,
        A3,
        target=Y,
        features_in_step=21,
        perturb_baseline="uniform",
        return_auc_per_sample=True,
        key=key,
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize(("baseline", "order"), [("mean", "lerf")])
def test_region_perturbation_with_padding(baseline, order):
    # 6 x 7 images in 4 x 4 patches: padded to 8 x 8 as Quantus pads
    ref = run(
        quantus.RegionPerturbation(
            patch_size=4, order=order, regions_evaluation=3, perturb_baseline=baseline, **QKW
        ),
        FN3,
        X3,
        A3,
    )
    ours = metrics.region_perturbation(
        FN3,
        X3,
        A3,
        target=Y,
        patch_size=4,
        order=order,
        regions_evaluation=3,
        perturb_baseline=baseline,
    )
    assert ours.shape == (3, 3)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_region_perturbation_random_order(monkeypatch):
    key = jax.random.key(9)
    perms = jax.vmap(lambda k: jax.random.permutation(k, 4))(
        jax.random.split(jax.random.split(key, 3)[0], 3)
    )
    monkeypatch.setattr(np.random, "permutation", Replay(list(np.asarray(perms))))
    ref = run(quantus.RegionPerturbation(patch_size=4, order="random", **QKW), FN3, X3, A3)
    ours = metrics.region_perturbation(FN3, X3, A3, target=Y, patch_size=4, order="random", key=key)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_selectivity():
    ref = run(quantus.Selectivity(patch_size=3, perturb_baseline="mean", **QKW), FN3, X3, A3)
    ours = metrics.selectivity(FN3, X3, A3, target=Y, patch_size=3, perturb_baseline="mean")
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def _road_case():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(64, 3)).astype(np.float32))
    fn = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    x = np.random.default_rng(3).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    labels = np.array(jnp.argmax(fn(x), -1))
    a = np.asarray(jaxattr.saliency(fn, x, target=labels))
    return fn, x, a, labels


def test_road_with_the_same_noise(monkeypatch):
    fn, x, a, labels = _road_case()
    pcts = [10, 40, 70, 95]
    key = jax.random.key(4)
    keys = jax.random.split(key, len(pcts))
    order = np.argsort(-a.reshape(3, -1), axis=1, kind="stable")
    draws = []
    for p, k in zip(pcts, keys, strict=True):  # Quantus: percentages, then examples
        noise = np.asarray(jax.random.normal(k, (x.size,))).reshape(3, 1, -1)
        count = int(64 * p / 100)
        draws += [noise[i][:, order[i, :count]] for i in range(3)]
    replay = Replay(draws)
    monkeypatch.setattr(np.random, "randn", lambda *shape: replay())
    ref = quantus.ROAD(percentages=pcts, noise=0.05, **QKW)(
        model=JaxModule(fn).eval(), x_batch=x, y_batch=labels, a_batch=a
    )
    ours = metrics.road(fn, x, a, target=labels, percentages=pcts, noise=0.05, key=key)
    assert replay.calls == 12
    np.testing.assert_array_equal(np.asarray(ours).mean(0), list(ref.values()))
    assert 0.0 < float(np.asarray(ours).mean()) < 1.0  # the perturbations do change labels


def test_noisy_linear_imputation_solves_quantus_system():
    from quantus.functions.perturb_func import noisy_linear_imputation

    x = np.random.default_rng(5).uniform(size=(1, 2, 9, 8)).astype(np.float32)
    for p in (20, 90, 99):
        idx = np.random.default_rng(p).permutation(72)[: int(72 * p / 100)]
        ref = noisy_linear_imputation(arr=x[0].astype(np.float64), indices=idx, noise=0.0)
        mask = np.zeros(72, bool)
        mask[idx] = True
        ours = metrics.noisy_linear_imputation(None, x, mask.reshape(1, 9, 8), noise=0.0)
        np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=2e-5)


def test_irof_felzenszwalb_per_example():
    fn = mlp(1, 16, 16, seed=1)
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(3, 1, 16, 16)).astype(np.float32)
    x[:, :, :8] *= 0.2
    a = rng.normal(size=(3, 1, 16, 16)).astype(np.float32)
    # batch_size=1: Quantus's "mean" baseline and curve padding are then per example
    ref = run(
        quantus.IROF(segmentation_method="felzenszwalb", return_aggregate=False, **QKW),
        fn,
        x,
        a,
        batch_size=1,
    )
    ours = metrics.irof(
        fn, x, a, target=Y, segmentation_method="felzenszwalb", return_aggregate=False
    )
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-5)


def test_sufficiency():
    a = np.concatenate([A3, A3[:1] + 0.01, A3[1:2] * 1.02]).astype(np.float32)
    x = np.concatenate([X3, X3[:1], X3[1:2]])
    ref = quantus.Sufficiency(threshold=0.5, normalise=False, disable_warnings=True)(
        model=JaxModule(FN3).eval(), x_batch=x, y_batch=np.zeros(5, int), a_batch=a
    )
    ours = metrics.sufficiency(FN3, x, a, threshold=0.5, normalise=False)
    np.testing.assert_allclose(ours, np.asarray(ref, np.float64), atol=ATOL)
    assert np.asarray(ours).max() > 0


# --------------------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------------------

A_GRAD = np.asarray(jaxattr.gradient(FN1, X1, target=Y))


def test_local_lipschitz_estimate_with_the_same_noise(monkeypatch):
    key = jax.random.key(7)
    keys = jax.random.split(jax.random.split(key)[0], 5)
    noise = [0.1 * np.asarray(jax.random.normal(k, (X1.size,)).reshape(X1.shape)) for k in keys]
    monkeypatch.setattr(np.random, "normal", Replay(noise))
    ref = run(
        quantus.LocalLipschitzEstimate(nr_samples=5, **QKW),
        FN1,
        X1,
        A_GRAD,
        explain_func=explainer(FN1),
    )
    ours = metrics.local_lipschitz_estimate(
        jaxattr.gradient, FN1, X1, A_GRAD, target=Y, nr_samples=5, key=key
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity"])
def test_max_and_avg_sensitivity_with_the_same_noise(monkeypatch, name):
    key = jax.random.key(8)
    keys = jax.random.split(jax.random.split(key)[0], 4)
    noise = [np.asarray(jax.random.uniform(k, (X1.size,), minval=-0.2, maxval=0.2)) for k in keys]
    monkeypatch.setattr(np.random, "uniform", Replay(noise))
    ref = run(
        getattr(quantus, name)(nr_samples=4, **QKW), FN1, X1, A_GRAD, explain_func=explainer(FN1)
    )
    ours = {"MaxSensitivity": metrics.max_sensitivity, "AvgSensitivity": metrics.avg_sensitivity}[
        name
    ](jaxattr.gradient, FN1, X1, A_GRAD, target=Y, nr_samples=4, key=key)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


# 14 steps on width 7: dx = 1 and the shifts include 0 (the unchanged input, which scored
# its recomputation's rounding divided by 1e-9 before: 520 where Quantus has 2.8)
@pytest.mark.parametrize("nr_steps, return_nan", [(7, True), (14, False)])
def test_continuity(nr_steps, return_nan):
    ref = run(
        quantus.Continuity(nr_steps=nr_steps, return_nan_when_prediction_changes=return_nan, **QKW),
        FN1,
        X1,
        A_GRAD,
        explain_func=explainer(FN1),
    )
    ours = metrics.continuity(
        jaxattr.gradient,
        FN1,
        X1,
        target=Y,
        nr_steps=nr_steps,
        return_nan_when_prediction_changes=return_nan,
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=ATOL)


# --------------------------------------------------------------------------------------
# Localisation and complexity
# --------------------------------------------------------------------------------------

MASKS = RNG.uniform(size=(3, 1, 6, 7)) < 0.3
MASKS[2] = False
MASKS[2, 0, :2, :2] = True


@pytest.mark.parametrize(
    ("name", "ours", "kwargs"),
    [
        ("AttributionLocalisation", metrics.attribution_localisation, {}),
        ("TopKIntersection", metrics.top_k_intersection, {"k": 10}),
        ("TopKIntersection", metrics.top_k_intersection, {"k": 10, "concept_influence": True}),
        ("RelevanceMassAccuracy", metrics.relevance_mass_accuracy, {"abs": True}),
        ("RelevanceRankAccuracy", metrics.relevance_rank_accuracy, {}),
        ("AUC", metrics.auc, {}),
    ],
)
def test_localisation(name, ours, kwargs):
    ref = run(
        getattr(quantus, name)(**kwargs, **QKW), FN1, X1, A1, s_batch=MASKS.astype(np.float32)
    )
    np.testing.assert_allclose(ours(A1, MASKS, **kwargs), ref, atol=ATOL)


def test_localisation_empty_mask_is_nan():
    empty = np.zeros_like(MASKS)
    for metric in (
        metrics.relevance_mass_accuracy,
        metrics.relevance_rank_accuracy,
        metrics.auc,
        metrics.attribution_localisation,
    ):
        assert np.isnan(np.asarray(metric(A1, empty))).all()
    assert np.isnan(np.asarray(metrics.top_k_intersection(A1, empty, k=10))).all()


def test_pointing_game_without_ties():
    ref = run(quantus.PointingGame(**QKW), FN1, X1, A1, s_batch=MASKS.astype(np.float32))
    ours = metrics.pointing_game(A1[:, 0], MASKS[:, 0])
    np.testing.assert_array_equal(ours, ref.astype(bool))


@pytest.mark.parametrize("name", ["Sparseness", "Complexity", "EffectiveComplexity"])
def test_complexity(name):
    ours = {
        "Sparseness": metrics.sparseness,
        "Complexity": metrics.complexity,
        "EffectiveComplexity": metrics.effective_complexity,
    }[name]
    a = np.where(np.abs(A1) < 0.3, 0.0, A1).astype(np.float32)
    ref = run(getattr(quantus, name)(**QKW), FN1, X1, a)
    np.testing.assert_allclose(ours(a), ref, atol=ATOL)


# --------------------------------------------------------------------------------------
# Randomisation and axiomatic
# --------------------------------------------------------------------------------------


def twin_params(net):
    return {
        name: {k: jnp.asarray(v.detach().numpy()) for k, v in module.named_parameters()}
        for name, module in net.named_children()
        if list(module.parameters())
    }


def apply_twin(params, x):
    """The JAX twin of Conv2d(1, 2, 3) - ReLU - Flatten - Linear(40, 3)."""
    h = jax.lax.conv_general_dilated(
        x, params["0"]["weight"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    h = jax.nn.relu(h + params["0"]["bias"][None, :, None, None])
    return linear(h.reshape(h.shape[0], -1), params["3"]["weight"], params["3"]["bias"])


@functools.partial(jax.jit, static_argnums=0)
def _twin_explain(method, params, x, targets):
    return method(lambda z: apply_twin(params, z), x, target=targets)


def twin_explain(method, net, x, targets):
    """``method`` on the JAX twin of a torch CNN (compiled once: weights are arguments)."""
    return np.asarray(_twin_explain(method, twin_params(net), jnp.asarray(x), jnp.asarray(targets)))


def twin(net):
    params = twin_params(net)
    return lambda x: apply_twin(params, x)


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 5, 3)
    ).eval()


@pytest.mark.parametrize("order", ["top_down"])  # bottom_up, independent: tests/peer
def test_model_parameter_randomisation_with_torchs_reinitialisation(order):
    net = _cnn()
    params = twin_params(net)

    def explain(model, inputs, targets, **kwargs):  # the torch model's twin, explained
        return twin_explain(jaxattr.gradient, model, inputs, targets)

    def torch_reset(key, name, layer):  # what Quantus's generator does to that layer
        module = dict(net.named_children())[name]
        copy = type(module)(*_ctor_args(module))
        torch.manual_seed(42 + 1)
        copy.reset_parameters()
        return {k: jnp.asarray(v.detach().numpy()) for k, v in copy.named_parameters()}

    a = explain(net, X1, Y)
    ref = quantus.MPRT(layer_order=order, disable_warnings=True, normalise_func_kwargs=PER_EXAMPLE)(
        model=net, x_batch=X1, y_batch=Y, a_batch=a, explain_func=explain
    )
    ours = metrics.model_parameter_randomisation(
        jaxattr.gradient,
        apply_twin,
        params,
        X1,
        a,
        target=Y,
        layer_order=order,
        key=jax.random.key(0),
        randomise_func=torch_reset,
    )
    assert list(ours) == list(ref)
    for name in ref:
        np.testing.assert_allclose(ours[name], ref[name], atol=ATOL)
    last = metrics.model_parameter_randomisation(
        jaxattr.gradient,
        apply_twin,
        params,
        X1,
        a,
        target=Y,
        layer_order=order,
        key=jax.random.key(0),
        randomise_func=torch_reset,
        return_last_correlation=True,
    )
    np.testing.assert_allclose(last, list(ref.values())[-1], atol=ATOL)


def _ctor_args(module):
    if isinstance(module, torch.nn.Conv2d):
        return module.in_channels, module.out_channels, module.kernel_size
    return module.in_features, module.out_features


def test_random_logit_with_the_same_classes(monkeypatch):
    key = jax.random.key(11)
    draws = np.asarray(jax.random.randint(jax.random.split(key, 3)[0], (3,), 0, 2))
    monkeypatch.setattr(np.random, "randint", lambda *args, **kwargs: draws)
    ref = run(
        quantus.RandomLogit(num_classes=3, **QKW), FN1, X1, A_GRAD, explain_func=explainer(FN1)
    )
    ours = metrics.random_logit(jaxattr.gradient, FN1, X1, A_GRAD, target=Y, key=key)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    a = np.random.default_rng(2).normal(size=(2, 40)).astype(np.float32)
    b = a + np.random.default_rng(3).normal(size=(2, 40)).astype(np.float32) * 0.5
    for i in range(2):
        rng = float(max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min()))
        ref = structural_similarity(a[i], b[i], data_range=rng)
        np.testing.assert_allclose(metrics.ssim(a, b)[i], ref, atol=1e-5)


@pytest.mark.parametrize("baseline", ["black"])
def test_non_sensitivity(baseline):
    a = np.where(np.abs(A1) < 0.5, 0.0, A1).astype(np.float32)
    ref = run(quantus.NonSensitivity(perturb_baseline=baseline, eps=1e-3, **QKW), FN1, X1, a)
    ours = metrics.non_sensitivity(FN1, X1, a, target=Y, perturb_baseline=baseline, eps=1e-3)
    np.testing.assert_array_equal(ours, ref)


def _shift_all(arr, indices, indexed_axes, input_shift, **kwargs):
    # Quantus's perturb_batch hands each example indices[i][1:]: its first feature is never
    # shifted (and the shift is then no longer compensated there); shift every feature
    return arr + input_shift


@pytest.mark.parametrize("method", [jaxattr.gradient, jaxattr.input_x_gradient])
def test_input_invariance_against_quantus_bias_shift(method):
    net = _cnn()
    fn = twin(net)

    def explain(model, inputs, targets, **kwargs):
        return twin_explain(method, model, inputs, targets)

    a = explain(net, X1, Y)
    ref = quantus.InputInvariance(perturb_func=_shift_all, disable_warnings=True)(
        model=net, x_batch=X1, y_batch=Y, a_batch=a, explain_func=explain
    )
    ours = metrics.input_invariance(method, fn, X1, a, target=Y)
    np.testing.assert_array_equal(ours, np.asarray(ref))
    assert bool(np.all(ours)) == (method is jaxattr.gradient)


def test_completeness_gap_matches_quantus_difference():
    captured = []

    def output_func(diff):
        captured.append(np.asarray(diff))
        return diff

    a = np.asarray(
        jaxattr.integrated_gradients(
            FN1, X1, target=Y, baselines=X1.min(axis=(1, 2, 3), keepdims=True)
        )
    )
    quantus.Completeness(normalise=False, output_func=output_func, disable_warnings=True)(
        model=JaxModule(FN1).eval(), x_batch=X1, y_batch=Y, a_batch=a
    )
    gap = metrics.completeness(
        FN1, X1, a, target=Y, baselines=X1.min(axis=(1, 2, 3), keepdims=True)
    )
    np.testing.assert_allclose(gap, a.reshape(3, -1).sum(1) - captured[0], atol=ATOL)


# --------------------------------------------------------------------------------------
# Contract: namespace, keys, errors
# --------------------------------------------------------------------------------------


def test_namespace_is_lazy_and_complete():
    import subprocess
    import sys

    code = (
        "import sys, jaxattr; assert 'jaxattr.metrics' not in sys.modules; "
        "m = jaxattr.metrics; print(sorted(n for n in dir(m) if not n.startswith('_')) "
        "== sorted(m.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr
    for name in (
        "infidelity",
        "sensitivity_max",
        "deletion_curve",
        "insertion_curve",
        "pointing_game",
        "completeness",
    ):
        assert getattr(metrics, name) is getattr(jaxattr, name)


def test_random_metrics_need_a_key_and_are_fixed_by_it():
    with pytest.raises(ValueError, match="key=jax.random.key"):
        metrics.faithfulness_correlation(FN3, X3, A3, target=Y, subset_size=20, nr_runs=10)
    with pytest.raises(ValueError, match="key=jax.random.key"):
        metrics.pixel_flipping(FN3, X3, A3, target=Y, perturb_baseline="uniform")
    one, two, other = (
        metrics.faithfulness_correlation(
            FN3,
            X3,
            A3,
            target=Y,
            subset_size=20,
            nr_runs=10,
            key=jax.random.key(seed),
            return_aggregate=False,
        )
        for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="perturb_baseline must be one of"):
        metrics.pixel_flipping(FN1, X1, A1, target=Y, perturb_baseline="grey")
    with pytest.raises(ValueError, match="attributions of shape"):
        metrics.pixel_flipping(FN1, X1, A1[:, :, :5], target=Y)
    with pytest.raises(ValueError, match="features_in_step must be at most"):
        metrics.faithfulness_estimate(FN1, X1, A1, target=Y, features_in_step=1000)
    with pytest.raises(ValueError, match="order must be one of"):
        metrics.region_perturbation(FN1, X1, A1, target=Y, order="best")
    with pytest.raises(ValueError, match="masks must have one element per attribution"):
        metrics.auc(A1, MASKS[:, :, :3])
    with pytest.raises(ValueError, match="layer_order must be one of"):
        metrics.model_parameter_randomisation(
            jaxattr.gradient,
            apply_twin,
            twin_params(_cnn()),
            X1,
            target=Y,
            key=jax.random.key(0),
            layer_order="random",
        )


def test_custom_perturb_func_sees_the_cumulative_mask():
    seen = []

    def perturb(key, x, mask):
        seen.append(mask.shape)
        return jnp.where(mask, 0.0, x)

    ours = metrics.pixel_flipping(FN3, X3, A3, target=Y, features_in_step=6, perturb_func=perturb)
    ref = metrics.pixel_flipping(FN3, X3, A3, target=Y, features_in_step=6, perturb_baseline=0.0)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert seen and seen[0] == X3.shape
