"""Import boundaries: jaxattr needs no torch or onnx; the bridge has one import path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, cwd: str = _ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_import_jaxattr_never_imports_torch_or_onnx():
    code = (
        "import sys, jaxattr, jaxattr.viz, jaxattr.flax, jaxattr.cli\n"
        "jaxattr.integrated_gradients(lambda x: x.sum(-1), __import__('numpy').ones((1, 3)))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'onnx', 'onnxruntime', 'captum', 'zennit', 'transformers', 'sklearn'))\n"
        "print(bad)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_bridge_folder_cannot_be_imported_as_a_second_package():
    out = _run("import bridge")  # the repository root is on sys.path here
    assert out.returncode != 0
    assert "the bridge is the installed package jaxattr.bridge" in out.stderr


@pytest.mark.parametrize("name", ["Converted", "UnsupportedOpsError", "from_torch"])
def test_the_doctests_see_the_installed_bridge(name):
    """tests and doctests import the one copy: ``bridge.X`` is ``jaxattr.bridge.X``."""
    import jaxattr.bridge

    assert sys.modules["bridge"] is jaxattr.bridge  # conftest maps the collected names
    assert getattr(sys.modules["bridge.convert"], name, None) in (
        None,
        getattr(jaxattr.bridge, name),
    )
