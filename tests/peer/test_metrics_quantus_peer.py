"""Slower sweeps of jaxattr.metrics against Quantus 0.6.0 (``-m peer``).

The default suite (tests/test_metrics_quantus.py) checks every metric once; this sweeps
baselines, orders, patch sizes, Quantus's default sizes, 16 x 16 images, the torch twin and
the remaining options, with the same set-up (shared model callback, attributions and
replayed numpy draws). Tolerances as there.
"""

from __future__ import annotations

import numpy as np
import pytest

import tests.conftest  # noqa: F401 - torchvision stub before quantus imports zennit

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxattr  # noqa: E402
from jaxattr import metrics  # noqa: E402
from tests.test_metrics_quantus import (  # noqa: E402
    A1,
    A3,
    A_GRAD,
    ATOL,
    FN1,
    FN3,
    MASKS,
    PER_EXAMPLE,
    QKW,
    X1,
    X3,
    JaxModule,
    Replay,
    Y,
    _cnn,
    apply_twin,
    explainer,
    mlp,
    run,
    twin,
    twin_explain,
    twin_params,
)

RNG = np.random.default_rng(11)
FN16 = mlp(1, 16, 16, seed=3)
X16 = RNG.uniform(size=(4, 1, 16, 16)).astype(np.float32)
A16 = RNG.normal(size=(4, 1, 16, 16)).astype(np.float32)
Y16 = np.array([0, 1, 2, 0])


@pytest.fixture(autouse=True)
def _numpy2_aliases(monkeypatch):
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)


def run16(metric, fn=FN16, a=A16, **kwargs):
    return np.asarray(
        metric(model=JaxModule(fn).eval(), x_batch=X16, y_batch=Y16, a_batch=a, **kwargs),
        dtype=np.float64,
    )


BASELINES = ["black", "white", "mean", 0.3]


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("fis", [3, 21])
def test_faithfulness_estimate_sweep(baseline, fis):
    ref = run(
        quantus.FaithfulnessEstimate(features_in_step=fis, perturb_baseline=baseline, **QKW),
        FN3,
        X3,
        A3,
    )
    ours = metrics.faithfulness_estimate(
        FN3, X3, A3, target=Y, features_in_step=fis, perturb_baseline=baseline
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("softmax", [True, False])
def test_pixel_flipping_sweep(baseline, softmax):
    ref = run(
        quantus.PixelFlipping(features_in_step=6, perturb_baseline=baseline, **QKW),
        FN3,
        X3,
        A3,
        softmax=softmax,
    )
    ours = metrics.pixel_flipping(
        FN3, X3, A3, target=Y, features_in_step=6, perturb_baseline=baseline, softmax=softmax
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_pixel_flipping_default_single_features_on_16x16():
    ref = run16(quantus.PixelFlipping(**QKW))
    ours = metrics.pixel_flipping(FN16, X16, A16, target=Y16)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_pixel_flipping_on_a_torch_model_and_its_jax_twin():
    net = _cnn()
    ref = np.asarray(
        quantus.PixelFlipping(features_in_step=6, **QKW)(
            model=net, x_batch=X1, y_batch=Y, a_batch=A1
        )
    )
    ours = metrics.pixel_flipping(twin(net), X1, A1, target=Y, features_in_step=6)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("baseline", ["black", "white", "mean"])
def test_monotonicity_correlation_deterministic_baselines(baseline):
    ref = run(
        quantus.MonotonicityCorrelation(
            features_in_step=6, nr_samples=2, perturb_baseline=baseline, **QKW
        ),
        FN3,
        X3,
        A3,
    )
    ours = metrics.monotonicity_correlation(
        FN3, X3, A3, target=Y, features_in_step=6, perturb_baseline=baseline
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_faithfulness_correlation_quantus_defaults_on_16x16(monkeypatch):
    from jaxattr import _quantus_faithfulness as qf

    key = jax.random.key(21)
    idx = np.asarray(qf._subsets(jax.random.split(key, 3)[0], 100, 4, 256, 224))
    monkeypatch.setattr(np.random, "choice", Replay(list(idx.reshape(-1, 224))))
    ref = run16(quantus.FaithfulnessCorrelation(**QKW))
    ours = metrics.faithfulness_correlation(FN16, X16, A16, target=Y16, key=key)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize(
    ("baseline", "order"), [("black", "morf"), ("white", "lerf"), ("mean", "morf")]
)
@pytest.mark.parametrize("patch", [3, 4, 5])
def test_region_perturbation_sweep(baseline, order, patch):
    ref = run(
        quantus.RegionPerturbation(
            patch_size=patch, order=order, regions_evaluation=4, perturb_baseline=baseline, **QKW
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
        patch_size=patch,
        order=order,
        regions_evaluation=4,
        perturb_baseline=baseline,
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_region_perturbation_uniform_draws(monkeypatch):
    key = jax.random.key(13)
    draws = jax.random.uniform(jax.random.split(key, 3)[1], (4, 3))
    monkeypatch.setattr(np.random, "uniform", Replay(list(np.asarray(draws))))
    ref = run(
        quantus.RegionPerturbation(patch_size=4, perturb_baseline="uniform", **QKW), FN3, X3, A3
    )
    ours = metrics.region_perturbation(
        FN3, X3, A3, target=Y, patch_size=4, perturb_baseline="uniform", key=key
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("patch", [2, 4, 5])
@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_selectivity_sweep(patch, baseline):
    ref = run16(quantus.Selectivity(patch_size=patch, perturb_baseline=baseline, **QKW))
    ours = metrics.selectivity(
        FN16, X16, A16, target=Y16, patch_size=patch, perturb_baseline=baseline
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_road_default_percentages_without_noise():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(256, 3)).astype(np.float32))
    fn = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    labels = np.array(jnp.argmax(fn(X16), -1))
    a = np.asarray(jaxattr.saliency(fn, X16, target=labels))
    a = a + 1e-3 * RNG.normal(size=a.shape).astype(np.float32)  # no ties
    ref = quantus.ROAD(noise=0.0, **QKW)(
        model=JaxModule(fn).eval(), x_batch=X16, y_batch=labels, a_batch=a
    )
    ours = metrics.road(fn, X16, a, target=labels, noise=0.0)
    np.testing.assert_array_equal(np.asarray(ours).mean(0), list(ref.values()))


@pytest.mark.parametrize("baseline", ["mean", "black", 0.0])
def test_irof_slic_per_example(baseline):
    ref = run16(
        quantus.IROF(perturb_baseline=baseline, return_aggregate=False, **QKW), batch_size=1
    )
    ours = metrics.irof(
        FN16, X16, A16, target=Y16, perturb_baseline=baseline, return_aggregate=False
    )
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-5)


def test_irof_quantus_batch_mean_differs_as_documented():
    batched = run16(quantus.IROF(return_aggregate=False, **QKW))
    ours = np.asarray(metrics.irof(FN16, X16, A16, target=Y16, return_aggregate=False))
    assert not np.allclose(ours, batched, atol=1e-3)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_sufficiency_thresholds(threshold):
    # Quantus passes V=None to scipy's cdist for every metric, which only "seuclidean"
    # (its default) accepts in scipy 1.17: the other distance_func values fail there
    a = np.concatenate([A3, A3[:1] + 0.01, A3[1:2] * 1.02]).astype(np.float32)
    x = np.concatenate([X3, X3[:1], X3[1:2]])
    ref = quantus.Sufficiency(threshold=threshold, normalise=False, disable_warnings=True)(
        model=JaxModule(FN3).eval(), x_batch=x, y_batch=np.zeros(5, int), a_batch=a
    )
    ours = metrics.sufficiency(FN3, x, a, threshold=threshold, normalise=False)
    np.testing.assert_allclose(ours, np.asarray(ref, np.float64), atol=ATOL)


def test_max_sensitivity_return_nan_when_prediction_changes(monkeypatch):
    key = jax.random.key(8)
    keys = jax.random.split(jax.random.split(key)[0], 3)
    noise = [np.asarray(jax.random.uniform(k, (X1.size,), minval=-2.0, maxval=2.0)) for k in keys]
    monkeypatch.setattr(np.random, "uniform", Replay(noise))
    ref = run(
        quantus.MaxSensitivity(
            nr_samples=3, lower_bound=2.0, return_nan_when_prediction_changes=True, **QKW
        ),
        FN1,
        X1,
        A_GRAD,
        explain_func=explainer(FN1),
    )
    ours = metrics.max_sensitivity(
        jaxattr.gradient,
        FN1,
        X1,
        A_GRAD,
        target=Y,
        nr_samples=3,
        lower_bound=2.0,
        key=key,
        return_nan_when_prediction_changes=True,
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)
    assert np.isnan(ref).any()


def test_avg_sensitivity_upper_bound_and_normalise(monkeypatch):
    key = jax.random.key(9)
    keys = jax.random.split(jax.random.split(key)[0], 4)
    noise = [np.asarray(jax.random.uniform(k, (X1.size,), minval=0.1, maxval=0.3)) for k in keys]
    monkeypatch.setattr(np.random, "uniform", Replay(noise))
    ref = run(
        quantus.AvgSensitivity(
            nr_samples=4, lower_bound=0.1, upper_bound=0.3, normalise=True, abs=True, **QKW
        ),
        FN1,
        X1,
        A_GRAD,
        explain_func=explainer(FN1),
    )
    ours = metrics.avg_sensitivity(
        jaxattr.gradient,
        FN1,
        X1,
        A_GRAD,
        target=Y,
        nr_samples=4,
        lower_bound=0.1,
        upper_bound=0.3,
        normalise=True,
        abs=True,
        key=key,
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_continuity_defaults_on_16x16():
    a = np.asarray(jaxattr.gradient(FN16, X16, target=Y16))
    ref = run16(quantus.Continuity(**QKW), a=a, explain_func=explainer(FN16))
    ours = metrics.continuity(jaxattr.gradient, FN16, X16, target=Y16)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("ab", [True, False])
def test_localisation_abs_sweep(ab):
    for name, ours, kwargs in [
        ("AttributionLocalisation", metrics.attribution_localisation, {}),
        ("TopKIntersection", metrics.top_k_intersection, {"k": 5}),
        ("RelevanceMassAccuracy", metrics.relevance_mass_accuracy, {}),
        ("RelevanceRankAccuracy", metrics.relevance_rank_accuracy, {}),
        ("AUC", metrics.auc, {}),
    ]:
        ref = run(
            getattr(quantus, name)(abs=ab, **kwargs, **QKW),
            FN1,
            X1,
            A1,
            s_batch=MASKS.astype(np.float32),
        )
        got = np.asarray(ours(A1, MASKS, abs=ab, **kwargs))
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4, err_msg=name)


def test_attribution_localisation_weighted_differs_by_quantus_size_factor():
    ref = run(
        quantus.AttributionLocalisation(weighted=True, **QKW),
        FN1,
        X1,
        A1,
        s_batch=MASKS.astype(np.float32),
    )
    ours = np.asarray(metrics.attribution_localisation(A1, MASKS, weighted=True))
    # Quantus divides the mask size by x_batch[2:].size (every example after the second)
    np.testing.assert_allclose(ours * 42 / X1[2:].size, ref, atol=ATOL)


def test_mprt_bottom_up_independent_and_skip_layers():
    net = _cnn()
    params = twin_params(net)

    def explain(model, inputs, targets, **kwargs):
        return twin_explain(jaxattr.gradient, model, inputs, targets)

    def torch_reset(key, name, layer):
        module = dict(net.named_children())[name]
        args = (
            (module.in_channels, module.out_channels, module.kernel_size)
            if isinstance(module, torch.nn.Conv2d)
            else (module.in_features, module.out_features)
        )
        copy = type(module)(*args)
        torch.manual_seed(43)
        copy.reset_parameters()
        return {k: jnp.asarray(v.detach().numpy()) for k, v in copy.named_parameters()}

    a = explain(net, X1, Y)
    for kwargs in (
        {"layer_order": "bottom_up"},
        {"layer_order": "independent"},
        {"skip_layers": True},
    ):
        ref = quantus.MPRT(disable_warnings=True, normalise_func_kwargs=PER_EXAMPLE, **kwargs)(
            model=net, x_batch=X1, y_batch=Y, a_batch=a, explain_func=explain
        )
        ours = metrics.model_parameter_randomisation(
            jaxattr.gradient,
            apply_twin,
            params,
            X1,
            a,
            target=Y,
            key=jax.random.key(0),
            randomise_func=torch_reset,
            batch_size=2,
            **kwargs,
        )
        assert list(ours) == list(ref)
        for name in ref:
            np.testing.assert_allclose(ours[name], ref[name], atol=ATOL)


def test_mprt_default_reinitialisation_lowers_similarity():
    net = _cnn()
    out = metrics.model_parameter_randomisation(
        jaxattr.gradient,
        apply_twin,
        twin_params(net),
        X1,
        target=Y,
        key=jax.random.key(1),
        layer_order="bottom_up",
    )
    assert list(out) == ["original", "0", "3"]
    np.testing.assert_allclose(out["original"], 1.0, atol=1e-6)
    assert float(np.mean(out["3"])) < 0.9
    avg = metrics.model_parameter_randomisation(
        jaxattr.gradient,
        apply_twin,
        twin_params(net),
        X1,
        target=Y,
        key=jax.random.key(1),
        layer_order="bottom_up",
        return_average_correlation=True,
    )
    np.testing.assert_allclose(avg, (out["0"] + out["3"]) / 2, atol=1e-6)


@pytest.mark.parametrize("baseline", [0.5, "mean"])
def test_non_sensitivity_baselines(baseline):
    a = np.where(np.abs(A1) < 0.5, 0.0, A1).astype(np.float32)
    ref = run(quantus.NonSensitivity(perturb_baseline=baseline, eps=1e-3, **QKW), FN1, X1, a)
    ours = metrics.non_sensitivity(FN1, X1, a, target=Y, perturb_baseline=baseline, eps=1e-3)
    np.testing.assert_array_equal(ours, ref)


def test_random_logit_more_classes(monkeypatch):
    fn = mlp(1, 6, 7, k=10, seed=5)
    a = np.asarray(jaxattr.gradient(fn, X1, target=Y))
    key = jax.random.key(12)
    draws = np.asarray(jax.random.randint(jax.random.split(key, 3)[0], (3,), 0, 9))
    monkeypatch.setattr(np.random, "randint", lambda *args, **kwargs: draws)
    ref = run(quantus.RandomLogit(num_classes=10, **QKW), fn, X1, a, explain_func=explainer(fn))
    ours = metrics.random_logit(jaxattr.gradient, fn, X1, a, target=Y, key=key)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parametrize("name", ["Sparseness", "Complexity", "EffectiveComplexity"])
def test_complexity_on_16x16_without_normalise(name):
    ours = {
        "Sparseness": metrics.sparseness,
        "Complexity": metrics.complexity,
        "EffectiveComplexity": metrics.effective_complexity,
    }[name]
    ref = run16(getattr(quantus, name)(normalise=False, **QKW))
    np.testing.assert_allclose(ours(A16, normalise=False), ref, rtol=1e-5, atol=ATOL)


def test_faithfulness_correlation_chunks_and_aggregate(monkeypatch):
    from jaxattr import _quantus_faithfulness as qf

    key = jax.random.key(3)
    idx = np.asarray(qf._subsets(jax.random.split(key, 3)[0], 10, 3, 3 * 6 * 7, 20))
    monkeypatch.setattr(np.random, "choice", Replay(list(idx.reshape(-1, 20))))
    ref = run(quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=20, **QKW), FN3, X3, A3)
    ours = metrics.faithfulness_correlation(
        FN3, X3, A3, target=Y, nr_runs=10, subset_size=20, key=key, batch_size=3
    )
    np.testing.assert_allclose(ours, ref[0], atol=ATOL)


def test_monotonicity_correlation_single_features(monkeypatch):
    # one feature per step: attributions per channel, so that no two features tie (tied
    # features are ordered differently by numpy's sort and jaxattr's stable one)
    a = np.random.default_rng(4).normal(size=X3.shape).astype(np.float32)
    key = jax.random.key(5)
    draws = jax.random.uniform(jax.random.split(key)[0], (126, 2, 3))
    monkeypatch.setattr(np.random, "uniform", Replay(list(np.asarray(draws).reshape(-1, 3))))
    ref = run(quantus.MonotonicityCorrelation(nr_samples=2, **QKW), FN3, X3, a)
    ours = metrics.monotonicity_correlation(FN3, X3, a, target=Y, nr_samples=2, key=key)
    np.testing.assert_allclose(ours, ref, atol=ATOL)
