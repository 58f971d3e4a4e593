"""The Zennit front door: Zennit's attributor calls, unchanged, against Zennit itself.

Same model, same call on ``zennit.attribution``'s attributor and on
``jaxattr.compat.zennit``'s; ``max|ours - ref| / max|ref|`` is at most 1e-4 (observed
~2e-7 to 1e-6, printed with ``-s``). SmoothGrad is compared on the same draws (Zennit's
``torch.randn_like`` replaced by jaxattr's, as in test_parity_zennit_gradient).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn as nn

import jaxattr
from jaxattr.compat import UnsupportedOptionError
from jaxattr.compat import zennit as jz
from tests.helpers import Replay, assert_parity

zennit = pytest.importorskip("zennit")
import zennit.attribution as za  # noqa: E402
import zennit.canonizers as zcan  # noqa: E402
import zennit.composites as zc  # noqa: E402


class VGGish(nn.Module):
    """A small VGG-style network with a batch norm (torchvision's attribute names)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 8, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((2, 2)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    model = VGGish()
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x


def test_gradient_epsilon_plus_flat_as_in_zennits_readme(vgg):
    model, x = vgg
    with jz.Gradient(model, jz.EpsilonPlusFlat()) as attributor:
        out, rel = attributor(x, torch.eye(10)[[3]])
    with za.Gradient(model, zc.EpsilonPlusFlat()) as attributor:
        ref_out, ref_rel = attributor(x.clone().requires_grad_(), torch.eye(10)[[3]])
    assert_parity("Gradient(EpsilonPlusFlat) output", out, ref_out)
    assert_parity("Gradient(EpsilonPlusFlat) relevance", rel, ref_rel)


def _composites():
    return {
        "EpsilonPlus": (jz.EpsilonPlus(), zc.EpsilonPlus()),
        "EpsilonAlpha2Beta1": (jz.EpsilonAlpha2Beta1(), zc.EpsilonAlpha2Beta1()),
        "EpsilonAlpha2Beta1Flat": (jz.EpsilonAlpha2Beta1Flat(), zc.EpsilonAlpha2Beta1Flat()),
        "EpsilonGammaBox": (
            jz.EpsilonGammaBox(low=-3.0, high=3.0, gamma=0.5),
            zc.EpsilonGammaBox(low=-3.0, high=3.0, gamma=0.5),
        ),
        "ExcitationBackprop": (jz.ExcitationBackprop(), zc.ExcitationBackprop()),
        "GuidedBackprop": (jz.GuidedBackprop(), zc.GuidedBackprop()),
        "EpsilonPlusFlat(epsilon=0.1)": (
            jz.EpsilonPlusFlat(epsilon=0.1),
            zc.EpsilonPlusFlat(epsilon=0.1),
        ),
    }


@pytest.mark.parametrize("name", list(_composites()))
def test_composites_match_zennit(vgg, name):
    model, x = vgg
    ours_comp, ref_comp = _composites()[name]
    target = torch.eye(10)[[7]]
    with jz.Gradient(model, ours_comp) as attributor:
        _, rel = attributor(x, target)
    with za.Gradient(model, ref_comp) as attributor:
        _, ref = attributor(x.clone().requires_grad_(), target)
    assert_parity(f"Gradient({name})", rel, ref)


def test_canonizers_and_zennits_own_composite_instance(vgg):
    """The batch norm merged into the conv before it (SequentialMergeBatchNorm); Zennit's
    own composite instance (default parameters) is accepted as well."""
    model, x = vgg
    xs = torch.cat([x, -x])
    target = torch.eye(10)[[2, 5]]
    ref_comp = zc.EpsilonPlusFlat(canonizers=[zcan.SequentialMergeBatchNorm()])
    with za.Gradient(model, ref_comp) as attributor:
        _, ref = attributor(xs.clone().requires_grad_(), target)
    for comp in (
        jz.EpsilonPlusFlat(canonizers=[jz.SequentialMergeBatchNorm()]),
        zc.EpsilonPlusFlat(canonizers=[zcan.SequentialMergeBatchNorm()]),
    ):
        with jz.Gradient(model, comp) as attributor:
            _, rel = attributor(xs, target)
        assert_parity(f"Gradient({type(comp).__module__}.EpsilonPlusFlat + merged BN)", rel, ref)


def test_gradient_attr_output_callable_and_default(vgg):
    model, x = vgg

    def one_hot_max(output):  # a torch function of the output, as in Zennit's docs
        return output * (output == output.max(1, keepdim=True)[0])

    with jz.Gradient(model, attr_output=one_hot_max) as attributor:
        out, rel = attributor(x)
    with za.Gradient(model, attr_output=one_hot_max) as attributor:
        _, ref = attributor(x.clone().requires_grad_())
    assert_parity("Gradient(attr_output=callable)", rel, ref)
    with jz.Gradient(model) as attributor:  # default: the output itself
        _, rel = attributor(x)
    with za.Gradient(model) as attributor:
        _, ref = attributor(x.clone().requires_grad_())
    assert_parity("Gradient(attr_output=None)", rel, ref)


def test_smoothgrad_and_integrated_gradients(vgg, monkeypatch):
    model, x = vgg
    key = jax.random.key(11)
    normal, _ = jaxattr.smoothgrad_draws(key, x.numpy(), 0.2, 4)
    draws = [torch.from_numpy(np.asarray(z)) for z in np.asarray(normal)]
    monkeypatch.setattr(za.torch, "randn_like", Replay(draws))
    with za.SmoothGrad(model, noise_level=0.2, n_iter=4) as attributor:
        _, ref = attributor(x.clone().requires_grad_(), torch.eye(10)[[4]])
    monkeypatch.undo()
    with jz.SmoothGrad(model, noise_level=0.2, n_iter=4) as attributor:
        _, rel = attributor(x, torch.eye(10)[[4]], key=key)
    assert_parity("SmoothGrad", rel, ref)
    with za.IntegratedGradients(model, n_iter=10) as attributor:
        _, ref = attributor(x.clone().requires_grad_(), torch.eye(10)[[6]])
    with jz.IntegratedGradients(model, n_iter=10) as attributor:
        _, rel = attributor(x, torch.eye(10)[[6]])
    assert_parity("IntegratedGradients", rel, ref)


def test_unsupported_zennit_options_raise_a_named_error(vgg):
    model, _ = vgg
    with pytest.raises(UnsupportedOptionError, match="context"):
        jz.EpsilonPlusFlat().context(model)
    # Zennit's own composites are read back with any parameters (issue 15); a torch
    # function as a stabilizer cannot be
    with pytest.raises(UnsupportedOptionError, match="stabilizer"):
        jz.Gradient(model, zc.EpsilonPlusFlat(epsilon=lambda z: z + 0.3))
    with pytest.raises(UnsupportedOptionError, match="layer_map"):
        jz.EpsilonPlus(layer_map=[(nn.Linear, None)])
    with pytest.raises(UnsupportedOptionError, match="create_graph"):
        jz.Gradient(model, create_graph=True)
    with pytest.raises(UnsupportedOptionError, match="attr_output as a function"):
        jz.SmoothGrad(model, attr_output=lambda out: out)(torch.zeros(1, 3, 16, 16))
    with pytest.raises(UnsupportedOptionError, match="canonizer AttributeCanonizer"):
        jz.Gradient(model, jz.EpsilonPlus(canonizers=[zcan.AttributeCanonizer(lambda n, m: None)]))
