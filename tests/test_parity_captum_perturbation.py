"""Parity of the perturbation methods with Captum and Zennit on the same weights.

Random methods are compared on the same draws: Captum's ``torch.randperm`` calls and its
LIME/KernelSHAP samplers are replaced by the draws jaxattr makes from its key. Captum's
default LIME/KernelSHAP surrogates need scikit-learn, which is not installed here; both
sides are given a surrogate that records the data it is fitted on and solves the
weighted least squares in closed form (numpy), so the comparison covers the samples,
model evaluations, similarity weights and the spreading of coefficients; the JAX Lasso
itself is checked against its optimality conditions in ``test_perturbation.py``.
Tolerance: float32 on both sides, ``rtol=1e-4`` with an absolute floor of
``1e-4 * max|reference|``.
"""

from __future__ import annotations

from functools import partial

import captum.attr as ca
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum._utils.models.model import Model

import jaxattr
from tests import twins
from tests.helpers import Replay, assert_close


def _superpixels(h=32, w=32, size=8):
    ids = (np.arange(h)[:, None] // size) * (w // size) + np.arange(w)[None] // size
    return ids[None, None].astype(np.int64)  # (1, 1, H, W): shared over channels


@pytest.mark.parametrize("strides,batch_size", [(4, 7), ((3, 5, 6), None)])
def test_occlusion(cnn, strides, batch_size):
    model, fn, x = cnn
    window = (3, 8, 8)
    ref = ca.Occlusion(model).attribute(
        twins.to_torch(x),
        sliding_window_shapes=window,
        strides=strides,
        target=[1, 7],
        baselines=0.5,
        perturbations_per_eval=8,
    )
    ours = jaxattr.occlusion(
        fn,
        x,
        sliding_window_shapes=window,
        strides=strides,
        target=[1, 7],
        baselines=0.5,
        batch_size=batch_size,
    )
    assert_close(ours, ref)


def test_occlusion_tuple(two_input):
    model, fn, x = two_input
    ref = ca.Occlusion(model).attribute(
        tuple(map(twins.to_torch, x)),
        sliding_window_shapes=((2,), (2,)),
        strides=(1, 1),
        target=3,
        baselines=(0.1, -0.2),
    )
    ours = jaxattr.occlusion(
        fn, x, sliding_window_shapes=((2,), (2,)), strides=(1, 1), target=3, baselines=(0.1, -0.2)
    )
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])


def test_feature_ablation(cnn):
    model, fn, x = cnn
    mask = _superpixels(size=8)
    ref = ca.FeatureAblation(model).attribute(
        twins.to_torch(x),
        target=4,
        feature_mask=torch.from_numpy(mask),
        baselines=0.2,
        perturbations_per_eval=4,
    )
    ours = jaxattr.feature_ablation(fn, x, target=4, feature_mask=mask, baselines=0.2, batch_size=8)
    assert_close(ours, ref)


def test_feature_ablation_tuple_shared_ids(two_input):
    model, fn, x = two_input
    masks = (np.array([[0, 0, 1, 2]]), np.array([[2, 3, 3]]))  # id 2 spans both inputs
    ref = ca.FeatureAblation(model).attribute(
        tuple(map(twins.to_torch, x)),
        target=[0, 1, 2],
        feature_mask=tuple(torch.from_numpy(m) for m in masks),
    )
    ours = jaxattr.feature_ablation(fn, x, target=[0, 1, 2], feature_mask=masks)
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])


def test_feature_permutation(two_input, monkeypatch):
    model, fn, x = two_input
    x1 = np.concatenate([x[0], x[0][::-1] * 0.5])  # N=6
    key = jax.random.key(5)
    mask = np.array([[0, 1, 1, 2]])
    keys = jax.random.split(key, 3)
    perms = []
    for k in keys:  # jaxattr.permute_feature's draw (leaf index 0)
        p = np.asarray(jax.random.permutation(jax.random.fold_in(k, 0), 6))
        if (p == np.arange(6)).all():
            p = np.roll(np.arange(6), 1)
        perms.append(torch.from_numpy(p.astype(np.int64)))
    monkeypatch.setattr(torch, "randperm", Replay(perms))

    def single(a):
        return model(a, torch.zeros(a.shape[0], 3))

    ref = ca.FeaturePermutation(single).attribute(
        twins.to_torch(x1), target=2, feature_mask=torch.from_numpy(mask)
    )
    monkeypatch.undo()
    ours = jaxattr.feature_permutation(
        lambda a: fn(a, jnp.zeros((a.shape[0], 3))), x1, key=key, target=2, feature_mask=mask
    )
    assert_close(ours, ref)


def test_shapley_value_sampling(cnn, monkeypatch):
    model, fn, x = cnn
    mask = _superpixels(size=16)  # 4 features
    key = jax.random.key(2)
    perms = np.asarray(jaxattr.shapley_permutations(key, 4, 3))
    monkeypatch.setattr(
        torch, "randperm", Replay([torch.from_numpy(p.astype(np.int64)) for p in perms])
    )
    ref = ca.ShapleyValueSampling(model).attribute(
        twins.to_torch(x),
        target=[3, 8],
        feature_mask=torch.from_numpy(mask),
        n_samples=3,
        baselines=0.1,
        perturbations_per_eval=2,
    )
    monkeypatch.undo()
    ours = jaxattr.shapley_value_sampling(
        fn, x, key=key, target=[3, 8], feature_mask=mask, n_samples=3, baselines=0.1, batch_size=6
    )
    assert_close(ours, ref, rtol=2e-4)


def test_shapley_value_sampling_tuple(two_input, monkeypatch):
    model, fn, x = two_input
    key = jax.random.key(3)
    perms = np.asarray(jaxattr.shapley_permutations(key, 7, 4))
    monkeypatch.setattr(
        torch, "randperm", Replay([torch.from_numpy(p.astype(np.int64)) for p in perms])
    )
    ref = ca.ShapleyValueSampling(model).attribute(
        tuple(map(twins.to_torch, x)), target=1, n_samples=4
    )
    monkeypatch.undo()
    ours = jaxattr.shapley_value_sampling(fn, x, key=key, target=1, n_samples=4)
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])


def test_shapley_values_exact(two_input):
    model, fn, x = two_input
    masks = (np.array([[0, 0, 1, 2]]), np.array([[3, 4, 4]]))
    ref = ca.ShapleyValues(model).attribute(
        tuple(map(twins.to_torch, x)),
        target=[0, 4, 2],
        feature_mask=tuple(torch.from_numpy(m) for m in masks),
        baselines=(0.3, -0.1),
    )
    ours = jaxattr.shapley_values(
        fn, x, target=[0, 4, 2], feature_mask=masks, baselines=(0.3, -0.1)
    )
    assert_close(ours[0], ref[0])
    assert_close(ours[1], ref[1])


def _weighted_lstsq(z, y, w):
    p = w / w.sum()
    zc = z - p @ z
    yc = y - p @ y
    sq = np.sqrt(p)
    return np.linalg.lstsq(zc * sq[:, None], yc * sq, rcond=None)[0]


class _Recorder(Model):
    """A surrogate that records its training data and fits weighted least squares."""

    def __init__(self):
        self.data = []

    def fit(self, train_data, **kwargs):
        z, y, w = (t.double().numpy() for t in next(iter(train_data)))
        self.data.append((z, y, w))
        self.coef = _weighted_lstsq(z, y, w.reshape(-1))

    def representation(self):
        return torch.tensor(self.coef, dtype=torch.float32).reshape(1, -1)

    def __call__(self, x):
        raise NotImplementedError


def test_kernel_shap(two_input, monkeypatch):
    model, fn, x = two_input
    key = jax.random.key(4)
    n_samples = 14
    z = np.asarray(jaxattr.kernel_shap_samples(key, 3, 7, n_samples)).astype(np.int64)

    def replay_generator(self, original_inp, **kwargs):
        for row in rows.pop(0):
            yield torch.from_numpy(row[None])

    rows = list(z)
    monkeypatch.setattr(ca.KernelShap, "kernel_shap_perturb_generator", replay_generator)
    ks = ca.KernelShap(model)
    recorder = _Recorder()
    ks.interpretable_model = recorder
    ref = ks.attribute(
        tuple(map(twins.to_torch, x)), target=2, n_samples=n_samples, baselines=(0.2, 0.0)
    )
    monkeypatch.undo()
    ours = jaxattr.kernel_shap(fn, x, key=key, target=2, n_samples=n_samples, baselines=(0.2, 0.0))
    assert_close(ours[0], ref[0], rtol=2e-3)
    assert_close(ours[1], ref[1], rtol=2e-3)
    assert recorder.data[0][2].max() == 1e6


def test_lime_linear_surrogate(cnn):
    model, fn, x = cnn
    mask = _superpixels(size=8)  # 16 features
    key = jax.random.key(6)
    n_samples = 30
    z = np.asarray(jaxattr.lime_samples(key, 2, 16, n_samples)).astype(np.int64)
    rows = [torch.from_numpy(r[None]) for r in z.reshape(-1, 16)]
    recorder = _Recorder()
    lime = ca.Lime(model, interpretable_model=recorder, perturb_func=Replay(rows))
    ref = lime.attribute(
        twins.to_torch(x), target=[2, 5], feature_mask=torch.from_numpy(mask), n_samples=n_samples
    )
    ours = jaxattr.lime(
        fn,
        x,
        key=key,
        target=[2, 5],
        feature_mask=mask,
        n_samples=n_samples,
        interpretable_model="linear",
    )
    assert_close(ours, ref, rtol=2e-3)


def test_zennit_occlusion(cnn):
    import zennit.attribution as za

    model, fn, x = cnn
    onehot = np.eye(10, dtype=np.float32)[[3]]
    occl = partial(za.occlude_independent, fill_fn=lambda a: a * 0.5, invert=True)
    attributor = za.Occlusion(model, window=8, stride=4, occlusion_fn=occl)
    # Zennit sums attr_output_fn(output): give it output * relevance, the dot product
    _, ref = attributor(twins.to_torch(x), lambda out: out * torch.from_numpy(onehot))
    ours = jaxattr.occlusion(
        fn,
        x,
        window=8,
        stride=4,
        target=jnp.asarray(onehot),
        batch_size=16,
        occlusion_fn=partial(jaxattr.occlude_independent, fill_fn=lambda a: a * 0.5, invert=True),
    )
    assert_close(ours, ref)


def test_zennit_occlusion_trailing_window(cnn):
    import zennit.attribution as za

    model, fn, x = cnn
    attributor = za.Occlusion(
        model, window=(6, 10), stride=(5, 7), occlusion_fn=za.occlude_independent
    )
    _, ref = attributor(twins.to_torch(x), lambda out: out[:, 1:2])
    ours = jaxattr.occlusion(
        fn, x, window=(6, 10), stride=(5, 7), target=1, occlusion_fn=jaxattr.occlude_independent
    )
    assert_close(ours, ref)


def test_rise_mask_upsampling_matches_torchray_recipe():
    """TorchRay's RISE upsampling: reflect pad one cell, bilinear (align_corners=False)."""
    from jaxattr._rise import _upsample_reflect

    grid = (np.random.default_rng(3).uniform(size=(4, 1, 7, 7)) < 0.5).astype(np.float32)
    up_size = (32 + 5, 32 + 5)  # the input plus one cell of ceil(32 / 7) = 5
    cell = 6  # TorchRay's interpolation cell is ceil(up_size / 7) = 6, not 5
    padded = torch.nn.functional.pad(torch.from_numpy(grid), (1, 1, 1, 1), mode="reflect")
    up = torch.nn.functional.interpolate(
        padded, (cell * 9, cell * 9), mode="bilinear", align_corners=False
    )
    ref = up[:, :, cell : cell + up_size[0], cell : cell + up_size[1]][:, 0]
    ours = _upsample_reflect(jnp.asarray(grid[:, 0]), up_size)
    assert_close(ours, ref, rtol=1e-5)
