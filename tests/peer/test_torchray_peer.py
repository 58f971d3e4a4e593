"""TorchRay 1.0.0.2's own code over wider sweeps than tests/test_parity_torchray.py.

A small VGG (torchvision's layer names, 32x32 inputs), a residual CNN whose skip sum is
TorchRay's ``eltwise_sum`` (what its ``update_resnet`` installs) on the TorchRay side and a
plain ``+`` on the bridged side, every saliency option, RISE with TorchRay's own seeded
masks over several chunks, extremal perturbation's variants, perturbations, rewards and
TorchRay's default geometry (step 7, sigma 21) for 40 iterations, and the pointing game.
Tolerances: maps ``2e-5 * max|ref| + 1e-7`` as in the default suite; extremal histories
1e-4 relative at every iteration (measured 1.5e-6) and masks 5e-3 absolute: over 40
iterations a near-tie in the sort of TorchRay's regulariser, late in the run, can move a
few pixels (measured up to 2.8e-3, with the histories still within 1.5e-6); a semantic
difference (e.g. a damped first SGD step) moves the history by percents. Run with
``python -m pytest -m peer tests/peer``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchray")

import torch.nn as nn  # noqa: E402
from torchray.attribution import deconvnet as tr_deconvnet  # noqa: E402
from torchray.attribution import excitation_backprop as tr_ebp  # noqa: E402
from torchray.attribution import extremal_perturbation as tr_ep  # noqa: E402
from torchray.attribution import grad_cam as tr_grad_cam  # noqa: E402
from torchray.attribution import gradient as tr_gradient  # noqa: E402
from torchray.attribution import guided_backprop as tr_guided  # noqa: E402
from torchray.attribution import linear_approx as tr_linear  # noqa: E402
from torchray.attribution import rise as tr_rise  # noqa: E402
from torchray.benchmark.pointing_game import PointingGame  # noqa: E402

import jaxattr  # noqa: E402
from jaxattr import bridge  # noqa: E402
from jaxattr._rise import _rise_masks_from  # noqa: E402
from tests.helpers import assert_close_scaled  # noqa: E402
from tests.torch_models import vgg11  # noqa: E402

MASK_ATOL = 5e-3
#: max |ours - ref| <= rtol * max|ref| + atol (float32 on both sides), as test_parity_torchray
assert_close = functools.partial(assert_close_scaled, rtol=2e-5, atol=1e-7)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    net = vgg11(num_classes=10, width_div=16).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return net, x, bridge.from_torch(net, x), x.numpy()


class Residual(nn.Module):
    """conv-bn-relu, one basic block (its sum TorchRay's eltwise_sum when ``eltwise``),
    adaptive average pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 4)
        self.eltwise = False

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        out = self.conv3(self.relu(self.bn2(self.conv2(h))))
        out = tr_ebp.eltwise_sum(out, h) if self.eltwise else out + h
        return self.fc(torch.flatten(self.pool(self.relu2(out)), 1))


TARGETS = [3, 7]
LAYERS = ["features.4", "features.9", "features.10", "features.14"]
METHODS = {
    "gradient": (tr_gradient.gradient, jaxattr.gradient),
    "deconvnet": (tr_deconvnet.deconvnet, jaxattr.deconvolution),
    "guided_backprop": (tr_guided.guided_backprop, jaxattr.guided_backprop),
}


@pytest.mark.parametrize("layer", ["", *LAYERS])
@pytest.mark.parametrize("method", [*METHODS, "ebp"])
def test_backprop_methods_every_layer(vgg, method, layer):
    net, x, model, xj = vgg
    for options in ({}, {"resize": (40, 24), "smooth": 0.1}):
        if method == "ebp":
            ref = tr_ebp.excitation_backprop(
                net, x.clone(), TARGETS, saliency_layer=layer, **options
            )
            ours = jaxattr.excitation_backprop(
                model, x.numpy(), target=TARGETS, saliency_layer=layer, **options
            )
        else:
            tr_fn, fn = METHODS[method]
            ref = tr_fn(net, x.clone(), TARGETS, saliency_layer=layer, **options)
            ours = fn(
                model, xj, target=TARGETS, saliency_layer=layer, gradient_to_saliency=True,
                **options,
            )  # fmt: skip
        assert_close(ours, ref)


def test_cotangent_target_is_torchrays_tensor_target(vgg):
    net, x, model, xj = vgg
    cot = torch.randn(2, 10, generator=torch.Generator().manual_seed(3))
    ref = tr_gradient.gradient(net, x.clone(), cot, saliency_layer="features.9")
    ours = jaxattr.gradient(
        model, xj, target=cot.numpy(), saliency_layer="features.9", gradient_to_saliency=True
    )
    assert_close(ours, ref)


@pytest.mark.parametrize("layer", ["features.9", "features.14", "features.15", "avgpool"])
def test_grad_cam_and_linear_approx_every_layer(vgg, layer):
    net, x, model, xj = vgg
    for options in ({}, {"resize": (20, 36), "smooth": 0.05}):
        ref = tr_grad_cam.grad_cam(net, x.clone(), TARGETS, saliency_layer=layer, **options)
        ours = jaxattr.grad_cam(model, xj, layer, target=TARGETS, relu_attributions=True, **options)
        assert_close(ours, ref)
        ref = tr_linear.linear_approx(net, x.clone(), TARGETS, saliency_layer=layer, **options)
        assert_close(jaxattr.linear_approx(model, xj, layer, target=TARGETS, **options), ref)


@pytest.mark.parametrize(
    "saliency_layer,contrast_layer",
    [("features.9", "classifier.1"), ("features.4", "classifier.4"), ("features.1", "features.14")],
)
def test_contrastive_excitation_backprop_on_vgg(vgg, saliency_layer, contrast_layer):
    net, x, model, xj = vgg
    for resize in (False, True):
        ref = tr_ebp.contrastive_excitation_backprop(
            net,
            x.clone(),
            TARGETS,
            saliency_layer=saliency_layer,
            contrast_layer=contrast_layer,
            resize=resize,
        )
        ours = jaxattr.contrastive_excitation_backprop(
            model,
            xj,
            target=TARGETS,
            saliency_layer=saliency_layer,
            contrast_layer=contrast_layer,
            resize=resize,
        )
        assert_close(ours, ref)


def test_excitation_backprop_residual_sum_is_torchrays_eltwise_sum():
    torch.manual_seed(4)
    net = Residual().eval()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    model = bridge.from_torch(net, x)  # the plain sum: an "add" layer
    assert any(layer.kind == "add" for layer in model.layers.values())
    net.eltwise = True  # TorchRay's ResNet patch
    for layer in ("", "conv2", "relu2"):
        ref = tr_ebp.excitation_backprop(net, x.clone(), [1, 2], saliency_layer=layer)
        ours = jaxattr.excitation_backprop(model, x.numpy(), target=[1, 2], saliency_layer=layer)
        assert_close(ours, ref)
    net.eltwise = False  # without it TorchRay keeps the sum's plain gradient: different
    ref = tr_ebp.excitation_backprop(net, x.clone(), [1, 2])
    ours = np.asarray(jaxattr.excitation_backprop(model, x.numpy(), target=[1, 2]))
    assert np.abs(ours - ref.numpy()).max() > 1e-3 * np.abs(ref.numpy()).max()


@pytest.mark.parametrize("num_masks,batch_size,num_cells,p", [(70, 32, 7, 0.5), (40, 16, 4, 0.3)])
def test_rise_with_torchrays_seeded_masks(vgg, num_masks, batch_size, num_cells, p):
    """TorchRay draws each chunk's grid, then its row and column shifts: redrawn in order."""
    net, x, model, xj = vgg
    seed = 11
    ref = tr_rise.rise(
        net, x, seed=seed, num_masks=num_masks, num_cells=num_cells, p=p, batch_size=batch_size
    )
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    cell = int(np.ceil(32 / num_cells))
    masks = []
    for start in range(0, num_masks, batch_size):
        m = min(batch_size, num_masks - start)
        grid = torch.rand(m, 1, num_cells, num_cells) < p
        shifts = [torch.randint(0, cell, (m,)) for _ in range(2)]
        masks.append(
            np.asarray(_rise_masks_from(grid[:, 0].numpy(), np.stack(shifts, 1), (32, 32)))
        )
    torch.set_rng_state(state)
    masks = np.concatenate(masks)[:, None]
    assert_close(jaxattr.rise(model, xj, filter_masks=masks, batch_size=batch_size), ref)
    ref = tr_rise.rise_class(
        net, x, target=TARGETS, seed=seed, num_masks=num_masks, num_cells=num_cells, p=p,
        batch_size=batch_size, resize=(16, 20),
    )  # fmt: skip
    ours = jaxattr.rise(model, xj, target=TARGETS, filter_masks=masks, resize=(16, 20))
    assert_close(ours[:, :1], ref)


def _gap_areas(shape, step, sigma, count):
    """Areas whose boundary in TorchRay's sorted initial mask lies between clearly distinct
    values (no float-rounding ties there; see docs/perturbation.md)."""
    gen = tr_ep.MaskGenerator(shape, step, sigma)
    _, full = gen.generate(torch.ones(1, 1, *gen.shape_in))
    v = np.sort(full.reshape(-1).numpy())
    u = len(v)
    out = []
    for a in np.arange(0.05, 0.95, 0.005):
        k = int(u * (1 - a))
        if 0 < k < u and v[k] - v[k - 1] > 1e-3:
            out.append(float(a))
    assert len(out) >= count, out
    return out[:: max(1, len(out) // count)][:count]


@pytest.mark.parametrize("variant", ["preserve", "delete", "dual"])
@pytest.mark.parametrize("perturbation", ["blur", "fade"])
@pytest.mark.parametrize("jitter", [True, False])
def test_extremal_perturbation_variants(vgg, variant, perturbation, jitter):
    net, x, model, xj = vgg
    areas = _gap_areas((32, 32), 7, 21.0, 2)
    ref, hist = tr_ep.extremal_perturbation(
        net, x[1:].clone(), 5, areas=areas, variant=variant, perturbation=perturbation,
        jitter=jitter, max_iter=40,
    )  # fmt: skip
    ours, history = jaxattr.extremal_perturbation(
        model, xj[1:], target=5, areas=areas, variant=variant, perturbation=perturbation,
        jitter=jitter, max_iter=40, return_history=True,
    )  # fmt: skip
    assert_close(history[0], hist, rtol=1e-4)
    assert_close(np.asarray(ours)[:, 0, :1], ref, rtol=0, atol=MASK_ATOL)


@pytest.mark.parametrize("variant", ["preserve", "delete", "dual"])
def test_extremal_contrastive_reward_resize_smooth(vgg, variant):
    net, x, model, xj = vgg
    (area,) = _gap_areas((32, 32), 7, 21.0, 1)
    ref, hist = tr_ep.extremal_perturbation(
        net, x[:1].clone(), 2, areas=[area], variant=variant, max_iter=40,
        reward_func=tr_ep.contrastive_reward, resize=(24, 40), smooth=0.05,
    )  # fmt: skip
    ours, history = jaxattr.extremal_perturbation(
        model, xj[:1], target=2, areas=area, variant=variant, max_iter=40,
        reward_func="contrastive", resize=(24, 40), smooth=0.05, return_history=True,
    )  # fmt: skip
    assert_close(history[0], hist, rtol=1e-4)
    assert_close(np.asarray(ours)[:1, :1], ref, rtol=0, atol=MASK_ATOL)


def test_extremal_custom_reward_is_torchrays_reward_func(vgg):
    """A callable reward here is TorchRay's reward_func after its variant handling."""
    net, x, model, xj = vgg

    def tr_reward(activation, target, variant):
        r = activation[:, target] - 0.5 * activation[:, 0]
        return -r if variant == "delete" else r

    (area,) = _gap_areas((32, 32), 7, 21.0, 1)
    ref, hist = tr_ep.extremal_perturbation(
        net, x[:1].clone(), 4, areas=[area], variant="delete", max_iter=25, reward_func=tr_reward
    )
    ours, history = jaxattr.extremal_perturbation(
        model, xj[:1], areas=area, variant="delete", max_iter=25, return_history=True,
        reward_func=lambda y: y[:, 4] - 0.5 * y[:, 0],
    )  # fmt: skip
    assert_close(history[0], hist, rtol=1e-4)
    assert_close(np.asarray(ours)[:1, :1], ref, rtol=0, atol=MASK_ATOL)


def test_extremal_where_the_area_boundary_splits_a_tie(vgg):
    """Area 0.1 (TorchRay's default) puts the regulariser's boundary inside a group of
    initial mask values within 1e-3 of each other: the sort's order there, hence the
    first gradient, may depend on float rounding. The first iteration's energies agree;
    the masks may then differ by a measured amount (docs/perturbation.md), not bit for
    bit. Measured here: 4.5e-5 after 10 iterations (0.11 in another geometry)."""
    net, x, model, xj = vgg
    ref, hist = tr_ep.extremal_perturbation(net, x[:1].clone(), 2, areas=[0.1], max_iter=10)
    ours, history = jaxattr.extremal_perturbation(
        model, xj[:1], target=2, areas=0.1, max_iter=10, return_history=True
    )
    assert_close(history[0, :, :, 0], hist[:, :, 0], rtol=1e-5)
    diff = float(np.abs(np.asarray(ours)[0, 0] - ref[0, 0].numpy()).max())
    assert diff < 0.5  # a bound for the same method, not a tolerance


def test_pointing_game_sweep():
    rng = np.random.default_rng(6)
    for shape in ((7, 9), (31, 17), (64, 64)):
        maps = rng.normal(size=(60, *shape)).astype(np.float32)
        maps[:5] = 0.0  # ties: the first maximum in row-major order on both sides
        masks = rng.uniform(size=(60, *shape)) < rng.uniform(0.001, 0.1)
        for tolerance in range(1, 20, 3):
            game = PointingGame(3, tolerance=tolerance)
            hits = []
            for a, m in zip(maps, masks, strict=True):
                row, col = np.unravel_index(np.argmax(a), a.shape)
                hits.append(game.evaluate(torch.from_numpy(m), (int(col), int(row))) == 1)
            ours = np.asarray(jaxattr.pointing_game(maps, masks, tolerance=tolerance))
            np.testing.assert_array_equal(ours, hits)
