"""Doctest set-up for the bridge's docstrings.

The examples in ``bridge/*.py`` share a context, as the module docs do: ``torch``, ``np``,
``jax``, ``bridge``, a torchvision-style ResNet-18 ``torch_model`` (also ``model``), an
input ``x`` for it, its conversion ``conv``, and ``model_with_fft`` (an op the bridge does
not lower). They run in a temporary directory, so saved files do not land in the repo.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest


def _one_bridge() -> None:
    """Collecting ``bridge/*.py`` for doctests imports them as ``bridge.<module>``: map
    those names to the installed ``jaxattr.bridge`` modules (the same files), so that the
    doctests run the one copy users import. ``import bridge`` itself is refused."""
    try:
        import jaxattr.bridge as package
    except ImportError:  # torch-free runs: the bridge's doctests are not collected
        return
    sys.modules["bridge"] = package
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"jaxattr.bridge.{info.name}")
        sys.modules[f"bridge.{info.name}"] = module


_one_bridge()

_NAMESPACE: dict = {}


def _bridge_namespace() -> dict:
    if not _NAMESPACE:
        import jax
        import numpy as np
        import torch

        from jaxattr import bridge
        from tests import torch_models as tm

        class WithFFT(torch.nn.Module):
            def forward(self, x):
                return torch.fft.rfft(x, dim=-1).abs()

        torch.manual_seed(0)
        resnet = tm.resnet18(num_classes=10).eval()
        x = torch.randn(2, 3, 32, 32)
        _NAMESPACE.update(
            torch=torch, np=np, jax=jax, bridge=bridge, torch_model=resnet, model=resnet,
            x=x.numpy(), conv=bridge.from_torch(resnet, x), model_with_fft=WithFFT(), eps=0.0,
        )
    return _NAMESPACE


@pytest.fixture(autouse=True)
def _bridge_doctests(request, doctest_namespace, tmp_path, monkeypatch):
    if "bridge" in str(getattr(request.node, "fspath", "")) and request.node.name.startswith(
        "jaxattr.bridge."
    ):
        doctest_namespace.update(_bridge_namespace())
        monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _transformers_doctests(request):
    """docs/huggingface.md imports transformers: hide the tests' torchvision stub meanwhile.

    tests/conftest.py stubs torchvision for zennit; transformers' availability check
    raises on a stub module (it has no ``__spec__``).
    """
    if str(getattr(request.node, "fspath", "")).endswith("huggingface.md"):
        from tests.torch_models import _no_torchvision_stub

        with _no_torchvision_stub():
            yield
    else:
        yield


# ------------------------------------------------------------------ suite profile (opt-in)
# JAXATTR_TEST_PROFILE=path.tsv records, per test, its wall time and the process's resident
# memory after it (and the peak so far): what keeps the default suite within its budget.
_PROFILE = __import__("os").environ.get("JAXATTR_TEST_PROFILE")


if _PROFILE:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        import resource
        import time

        t = time.perf_counter()
        yield
        took = time.perf_counter() - t
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * 4096 / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(_PROFILE, "a") as f:
            f.write(f"{item.nodeid}\t{took:.2f}\t{rss:.0f}\t{peak:.0f}\n")
