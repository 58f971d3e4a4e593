"""Shared test set-up.

Zennit 0.5.1 imports torchvision at import time, only for isinstance checks in its
torchvision canonizers. torchvision cannot load here, so a stub
``torchvision.models.resnet`` with placeholder ``BasicBlock``/``Bottleneck`` classes is
installed before anything imports zennit. TorchRay also imports ``ResNet`` from it, and
``torchray.benchmark`` imports ``torchvision.datasets`` (``ImageFolder``,
``VOCDetection``, ``CocoDetection``) and ``torchvision.transforms``: placeholders too.
Reference ResNets used with Zennit's ResNet canonizer subclass these placeholders.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from tests.helpers import normal


def _install_torchvision_stub() -> None:
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - any failure to load means: use the stub
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
    try:
        import torch.nn as nn
    except ImportError:  # torch-free runs need no stub
        return

    class BasicBlock(nn.Module):
        """Placeholder for torchvision.models.resnet.BasicBlock."""

        expansion = 1

    class Bottleneck(nn.Module):
        """Placeholder for torchvision.models.resnet.Bottleneck."""

        expansion = 4

    class ResNet(nn.Module):
        """Placeholder for torchvision.models.resnet.ResNet (TorchRay imports it)."""

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock, resnet.Bottleneck, resnet.ResNet = BasicBlock, Bottleneck, ResNet
    tv.models, models.resnet = models, resnet
    tv.__path__, models.__path__ = [], []
    # torchray.benchmark (its PointingGame) subclasses these datasets and imports
    # transforms at import time; placeholders suffice, nothing here loads a dataset.
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("ImageFolder", "VOCDetection", "CocoDetection"):
        setattr(datasets, name, type(name, (), {"__doc__": f"Placeholder for {name}."}))
    transforms = types.ModuleType("torchvision.transforms")
    tv.datasets, tv.transforms = datasets, transforms
    # No __spec__: transformers would then believe torchvision is installed and import its
    # transforms; tests/torch_models.py hides the stub while it builds transformers models.
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.models": models,
            "torchvision.models.resnet": resnet,
            "torchvision.datasets": datasets,
            "torchvision.transforms": transforms,
        }
    )


if not os.environ.get("PYTEST_VERSION"):  # imported outside pytest (the benchmarks)
    _install_torchvision_stub()


def pytest_configure(config):
    # Before collection imports zennit; not in the xdist controller, which runs no tests
    # (importing torch there would hold ~300 MB for the whole run).
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no":
        _install_torchvision_stub()


# Models shared by several test modules: fixtures here, so that no test module imports
# another's (each module still builds its own copy: module scope).


@pytest.fixture(scope="module")
def cnn():
    """The seed CNN (torch) and its JAX twin, with a batch of two 3x32x32 images."""
    from tests import twins

    model = twins.seed_cnn(0)
    return model, twins.seed_cnn_jax(model), normal((2, 3, 32, 32), 0)


@pytest.fixture(scope="module")
def two_input():
    """A two-input torch model, its JAX twin, and inputs of shapes (3, 4) and (3, 3)."""
    from tests import twins

    model = twins.TwoInput(1)
    rng = np.random.default_rng(1)
    x1 = rng.normal(size=(3, 4)).astype(np.float32)
    x2 = rng.normal(size=(3, 3)).astype(np.float32)
    return model, twins.two_input_jax(model), (x1, x2)


def _small_net(max_pool: bool):
    import torch

    from jaxattr import bridge
    from tests.torch_models import SmallNet

    torch.manual_seed(2)
    model = SmallNet(max_pool=max_pool).eval()
    return model, bridge.from_torch(model, torch.randn(2, 3, 16, 16)), normal((3, 3, 16, 16), 2)


@pytest.fixture(scope="module")
def small():
    """SmallNet (every nonlinearity its own module), bridged, and three 3x16x16 inputs."""
    return _small_net(max_pool=True)


@pytest.fixture(scope="module")
def small_avg():
    """SmallNet with an average pool: Captum's max-pool DeepLift rule does not take effect
    with torch 2.13 (see test_deep_lift_max_pool_is_complete), so DeepLift parity is
    checked without max pools."""
    return _small_net(max_pool=False)


@pytest.fixture(scope="module")
def tiny():
    """TinyNet (conv-relu-conv-relu-avgpool-dense-relu-dense), bridged, two 3x12x12 inputs."""
    from tests.torch_models import TinyNet, tiny_bridged

    return tiny_bridged(TinyNet, 11, (2, 3, 12, 12))


@pytest.fixture(scope="module")
def tiny_bn():
    """TinyVggBn (VGG-style features with batch norms), bridged, two 3x12x12 inputs."""
    from tests.torch_models import TinyVggBn, tiny_bridged

    return tiny_bridged(TinyVggBn, 12, (2, 3, 12, 12))
