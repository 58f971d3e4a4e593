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

import gc
import os
import sys
import types

import pytest


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


_install_torchvision_stub()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module starts with empty caches, so the suite's memory stays bounded."""
    yield
    import jaxattr

    jaxattr.clear_caches()
    gc.collect()
    _return_freed_memory()


#: Resident memory (MiB) above which a test's compiled programs are released at once
#: instead of at the end of its module (``JAXATTR_TEST_RSS_LIMIT_MB``). Tests that each
#: compile a model of their own (closures over weights are constants of their programs)
#: otherwise pile up 100-250 MiB apiece within one module.
#: Under pytest-xdist (two workers share the machine) each worker gets a lower limit.
RSS_LIMIT_MB = float(os.environ.get(
    "JAXATTR_TEST_RSS_LIMIT_MB", "1536" if os.environ.get("PYTEST_XDIST_WORKER") else "2048"
))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: no bound
        return 0.0


@pytest.fixture(autouse=True)
def _bound_memory_within_a_module():
    """Release compiled programs after a test that leaves the process above the limit."""
    yield
    if _rss_mb() > RSS_LIMIT_MB:
        import jaxattr

        jaxattr.clear_caches()
        gc.collect()
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand memory freed by the test module back to the OS (glibc keeps it otherwise)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
