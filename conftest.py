"""Suite-wide set-up: compile effort, the memory bound, and the bridge doctests' context.

The examples in ``bridge/*.py`` share a context, as the module docs do: ``torch``, ``np``,
``jax``, ``bridge``, a torchvision-style ResNet-18 ``torch_model`` (also ``model``), an
input ``x`` for it, its conversion ``conv``, and ``model_with_fft`` (an op the bridge does
not lower). They run in a temporary directory, so saved files do not land in the repo.
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
import sys

import pytest

# ------------------------------------------------------------------ compile effort
#: The suite's programs are compiled with LLVM at -O0 (``--xla_backend_optimization_level=0``,
#: set here before JAX starts its backend): compilation is most of the suite's CPU time,
#: and -O0 cuts the suite's CPU time by about 40% (tests/test_layers.py: 121 -> 79 CPU-s).
#: XLA's graph passes (fusion, layout, the YNNPACK library calls) are the same at every
#: level, and so are the results to float32 rounding; the XLA miscompiles jaxattr works
#: around (tests/test_trust.py -k fusion) show at -O0 as at the default. Users, the
#: benchmarks and ``scripts/test_slow.sh`` compile with XLA's defaults;
#: ``JAXATTR_TEST_XLA_DEFAULTS=1`` runs this suite with them too.
if not os.environ.get("JAXATTR_TEST_XLA_DEFAULTS") and "xla_backend_optimization_level" not in (
    os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()


# ------------------------------------------------------------------ strict promotion
#: As equinox's test suite does, the suite runs with JAX's strict dtype promotion and with
#: rank promotion raising (set here, before anything imports JAX, which reads these
#: variables when its config is created; the xdist workers inherit them, and
#: tests/test_imports.py checks that they see them). Library code must not rely on implicit
#: promotion: every mixed dtype or rank is made explicit (``jaxattr._core.promote``,
#: ``expand_rank``; the bridge applies torch's own rules, ``bridge/lowerings.py``), so
#: jaxattr runs under whatever promotion setting a user picks, and under JAX's defaults
#: (what users get) it computes the same results, bit for bit.
os.environ.setdefault("JAX_NUMPY_DTYPE_PROMOTION", "strict")
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")


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


def _is_xdist_controller(config) -> bool:
    """The pytest-xdist controller only schedules: its workers collect and run the tests."""
    return not hasattr(config, "workerinput") and getattr(config.option, "dist", "no") != "no"


def pytest_configure(config):
    # Not at import: the xdist controller would hold torch and JAX (~300 MB) for nothing.
    if not _is_xdist_controller(config):
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


#: Doctests whose example code (written as a user writes it, not library code) relies on
#: JAX's default promotion: they run with that one default restored.
#: - docs/llm.md trains its model with optax's adam, whose bias correction computes
#:   ``decay ** count`` with an int32 count (optax 0.2.8): standard dtype promotion.
_DOCTESTS_WITH_DEFAULT_PROMOTION = {
    "llm.md": ("dtype", "standard"),
}


@pytest.fixture(autouse=True)
def _doctests_with_default_promotion(request):
    setting = _DOCTESTS_WITH_DEFAULT_PROMOTION.get(request.node.name)
    if setting is None:
        yield
        return
    import jax

    kind, value = setting
    context = jax.numpy_dtype_promotion if kind == "dtype" else jax.numpy_rank_promotion
    with context(value):
        yield


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


# ------------------------------------------------------------------ memory bound
# Here, not in tests/conftest.py: the doctests (README.md, docs/*.md, the modules) are
# items of the run too, and late in a worker's run they had grown it to 2.7 GB.
@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module starts with empty caches, so the suite's memory stays bounded."""
    yield
    _release()


#: Resident memory (MiB) above which a test's compiled programs are released at once
#: instead of at the end of its module (``JAXATTR_TEST_RSS_LIMIT_MB``). Tests that each
#: compile a model of their own (closures over weights are constants of their programs)
#: otherwise pile up 100-250 MiB apiece within one module.
#: Under pytest-xdist (two workers share the machine) each worker gets a lower limit.
RSS_LIMIT_MB = float(
    os.environ.get(
        "JAXATTR_TEST_RSS_LIMIT_MB", "1300" if os.environ.get("PYTEST_XDIST_WORKER") else "2048"
    )
)
#: What a release cannot free (imported libraries, the module's fixtures, pages the
#: allocator keeps) can itself sit near or above the limit late in a run; releasing after
#: every test then frees nothing but recompiles the module's shared programs each time.
#: So the next release also waits until the process has grown this much (MiB,
#: ``JAXATTR_TEST_RSS_STEP_MB``) above where the last release left it.
RSS_STEP_MB = float(os.environ.get("JAXATTR_TEST_RSS_STEP_MB", "300"))
_AFTER_RELEASE_MB = [0.0]


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: no bound
        return 0.0


def _release() -> None:
    import jaxattr

    jaxattr.clear_caches()  # jax.clear_caches() too
    gc.collect()
    _return_freed_memory()
    _AFTER_RELEASE_MB[0] = _rss_mb()


@pytest.fixture(autouse=True)
def _bound_memory_within_a_module():
    """Release compiled programs after a test that leaves the process above the limit."""
    yield
    if _rss_mb() > max(RSS_LIMIT_MB, _AFTER_RELEASE_MB[0] + RSS_STEP_MB):
        _release()


def _return_freed_memory() -> None:
    """Hand memory freed by the test module back to the OS (glibc keeps it otherwise)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


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
