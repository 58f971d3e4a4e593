"""TorchRay's own code as the oracle (``pip install torchray==1.0.0.2 --no-deps``).

Every TorchRay method jaxattr mirrors runs here next to jaxattr on the same weights: a
tiny torch CNN, bridged with :func:`jaxattr.bridge.from_torch`. TorchRay needs
torchvision only for names: the stub of ``tests/conftest.py`` provides them.

Tolerances: the maps agree to float32 rounding, ``|ours - ref| <= 2e-5 * max|ref| + 1e-7``
(measured: at most 4.6e-6 relative, for excitation backprop at the input). Extremal
perturbation is iterative: compared after 12 TorchRay iterations, masks to 2e-5 and the
energy history to 1e-4 relative (measured 1.8e-6 and 4e-7); its areas are chosen where
the initial mask has no near-ties at the area boundary (see docs/perturbation.md: there
the sort in TorchRay's regulariser breaks float-rounding ties one way or the other).
Slower sweeps: tests/peer/test_torchray_peer.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchray")

import jax.numpy as jnp  # noqa: E402
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

TARGETS = [1, 3]
#: layer names of the CNN below: '3' conv (8x8), '5' ReLU (8x8), '6' avg pool (4x4),
#: '9' ReLU after the first linear layer (the contrast layer), '10' the classifier
CONV, RELU, POOL, CONTRAST = "3", "5", "6", "9"


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 8),
        nn.ReLU(),
        nn.Linear(8, 5),
    ).eval()
    with torch.no_grad():
        net[4].running_mean.uniform_(-0.2, 0.2)
        net[4].running_var.uniform_(0.5, 1.5)
        net[4].weight.uniform_(0.5, 1.5)
        net[4].bias.uniform_(-0.2, 0.2)
    return net


@pytest.fixture(scope="module")
def setup():
    net = cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return net, x, bridge.from_torch(net, x), x.numpy()


#: max |ours - ref| <= rtol * max|ref| + atol (float32 on both sides)
assert_close = functools.partial(assert_close_scaled, rtol=2e-5, atol=1e-7)


# --------------------------------------------------------------------------------------
# Backpropagation methods through TorchRay's saliency()
# --------------------------------------------------------------------------------------

OPTIONS = [
    {},
    {"saliency_layer": CONV, "resize": (20, 12), "smooth": 0.05},  # (width, height)
]


@pytest.mark.parametrize("options", OPTIONS, ids=["input", "layer-resize-smooth"])
@pytest.mark.parametrize("method", ["gradient", "deconvnet", "guided_backprop", "ebp"])
def test_backprop_methods_match_torchray(setup, method, options):
    net, x, model, xj = setup
    if method == "ebp":
        ref = tr_ebp.excitation_backprop(net, x.clone(), TARGETS, **options)
        ours = jaxattr.excitation_backprop(model, xj, target=TARGETS, **options)
    else:
        tr_fn = {
            "gradient": tr_gradient.gradient,
            "deconvnet": tr_deconvnet.deconvnet,
            "guided_backprop": tr_guided.guided_backprop,
        }[method]
        ours_fn = {
            "gradient": jaxattr.gradient,
            "deconvnet": jaxattr.deconvolution,
            "guided_backprop": jaxattr.guided_backprop,
        }[method]
        ref = tr_fn(net, x.clone(), TARGETS, **options)
        ours = ours_fn(model, xj, target=TARGETS, gradient_to_saliency=True, **options)
    assert_close(ours, ref)


def test_contrastive_excitation_backprop_matches_torchray(setup):
    net, x, model, xj = setup
    ref = tr_ebp.contrastive_excitation_backprop(
        net, x.clone(), TARGETS, saliency_layer=RELU, contrast_layer=CONTRAST, resize=(24, 20)
    )
    ours = jaxattr.contrastive_excitation_backprop(
        model, xj, target=TARGETS, saliency_layer=RELU, contrast_layer=CONTRAST, resize=(24, 20)
    )
    assert_close(ours, ref)
    # classifier_layer found by TorchRay itself (the last conv/linear with a weight)
    assert tr_ebp._get_classifier_layer(net)[1] == "10"


def test_grad_cam_and_linear_approx_match_torchray(setup):
    net, x, model, xj = setup
    kw = {"resize": True, "smooth": 0.1}
    ref = tr_grad_cam.grad_cam(net, x.clone(), TARGETS, saliency_layer=CONV, **kw)
    ours = jaxattr.grad_cam(model, xj, CONV, target=TARGETS, relu_attributions=True, **kw)
    assert_close(ours, ref)
    ref = tr_linear.linear_approx(net, x.clone(), TARGETS, saliency_layer=RELU)
    assert_close(jaxattr.linear_approx(model, xj, RELU, target=TARGETS), ref)


def test_the_options_are_not_inert(setup):
    """A missed conversion, resize or smoothing would fail the comparisons above."""
    net, x, model, xj = setup
    ref = tr_gradient.gradient(net, x.clone(), TARGETS, smooth=0.05)
    raw = jaxattr.gradient(model, xj, target=TARGETS, gradient_to_saliency=True)
    assert np.abs(np.asarray(raw) - ref.numpy()).max() > 0.1 * np.abs(ref.numpy()).max()
    assert jaxattr.gradient(model, xj, target=TARGETS).shape == (2, 3, 16, 16)


# --------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------


def test_rise_matches_torchray_with_given_masks(setup):
    net, x, model, xj = setup
    g = torch.Generator().manual_seed(2)
    masks = (torch.rand(20, 1, 16, 16, generator=g) > 0.5).float() * torch.rand(
        20, 1, 16, 16, generator=g
    )
    ref = tr_rise.rise(net, x, filter_masks=masks, num_masks=20, batch_size=8)
    ours = jaxattr.rise(model, xj, filter_masks=masks.numpy())  # every class
    assert_close(ours, ref)
    ref = tr_rise.rise(net, x, filter_masks=masks, num_masks=20, resize=(10, 12))
    assert_close(jaxattr.rise(model, xj, filter_masks=masks.numpy(), resize=(10, 12)), ref)
    ref = tr_rise.rise_class(net, x, target=TARGETS, filter_masks=masks, num_masks=20)
    ours = jaxattr.rise(model, xj, target=TARGETS, filter_masks=masks.numpy())
    assert ours.shape == x.shape
    assert_close(ours[:, :1], ref)


def test_rise_masks_are_torchrays_masks(setup):
    """TorchRay's own random masks (its seed, its generator), redrawn here from torch's
    generator in TorchRay's order and built by jaxattr's mask code, give TorchRay's map."""
    net, x, model, xj = setup
    seed, num_masks, num_cells, p = 3, 20, 3, 0.4
    ref = tr_rise.rise(net, x, seed=seed, num_masks=num_masks, num_cells=num_cells, p=p)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    grid = torch.rand(num_masks, 1, num_cells, num_cells) < p
    cell = int(np.ceil(16 / num_cells))
    shifts = [torch.randint(0, cell, (num_masks,)) for _ in range(2)]
    torch.set_rng_state(state)
    masks = _rise_masks_from(grid[:, 0].numpy(), np.stack(shifts, 1), (16, 16))
    ours = jaxattr.rise(model, xj, filter_masks=np.asarray(masks)[:, None])
    assert_close(ours, ref)


# --------------------------------------------------------------------------------------
# Extremal perturbation
# --------------------------------------------------------------------------------------


def test_smooth_mask_is_torchrays_mask_generator():
    for shape, step, sigma in (((16, 16), 4, 8.0), ((13, 20), 7, 21.0), ((30, 17), 3, 5.5)):
        gen = tr_ep.MaskGenerator(shape, step, sigma)
        params = torch.rand(3, 1, *gen.shape_in, generator=torch.Generator().manual_seed(4))
        cropped, _ = gen.generate(params)
        ours = jaxattr.smooth_mask(jnp.asarray(params[:, 0].numpy()), shape, step, sigma)
        assert_close(ours, cropped[:, 0], rtol=0, atol=5e-6)


def test_extremal_perturbation_matches_torchray(setup):
    """Preserve and delete (the dual variant), blur, jitter, two areas, resize: 12 steps."""
    net, x, model, xj = setup
    options = {"areas": [0.5, 0.51], "variant": "dual", "resize": (8, 12)}
    ref, hist = tr_ep.extremal_perturbation(
        net, x[:1].clone(), 2, max_iter=12, step=4, sigma=8, **options
    )
    ours, history = jaxattr.extremal_perturbation(
        model, xj[:1], target=2, max_iter=12, step=4, sigma=8.0, return_history=True, **options
    )
    assert_close(np.asarray(ours)[:, 0, :1], ref, rtol=0, atol=2e-5)  # (areas, 1, 12, 8)
    assert_close(history[0], hist, rtol=1e-4)


# --------------------------------------------------------------------------------------
# The pointing game of torchray.benchmark
# --------------------------------------------------------------------------------------


def test_pointing_game_matches_torchray_benchmark():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(40, 12, 15)).astype(np.float32)
    masks = rng.uniform(size=(40, 12, 15)) < 0.04
    labels = rng.integers(0, 4, size=40)
    for tolerance in (1, 2, 3, 5, 15):
        game = PointingGame(4, tolerance=tolerance)
        hits = []
        for a, m, c in zip(maps, masks, labels, strict=True):
            row, col = np.unravel_index(np.argmax(a), a.shape)
            hit = game.evaluate(torch.from_numpy(m), (int(col), int(row)))  # point is (u, v)
            game.aggregate(hit, int(c))
            hits.append(hit == 1)
        ours = np.asarray(jaxattr.pointing_game(maps, masks, tolerance=tolerance))
        np.testing.assert_array_equal(ours, hits)
        per_class = [ours[labels == c].mean() if (labels == c).any() else 0.0 for c in range(4)]
        np.testing.assert_allclose(per_class, game.class_accuracies.numpy(), rtol=1e-12)
    # tolerance 0: TorchRay's strict test accepts nothing, jaxattr the point itself
    game = PointingGame(4, tolerance=0)
    inside = np.zeros((5, 5), bool)
    inside[2, 2] = True
    assert game.evaluate(torch.from_numpy(inside), (2, 2)) == -1
    assert bool(jaxattr.pointing_game(inside[None].astype(np.float32), inside[None])[0])
