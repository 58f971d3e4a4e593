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


