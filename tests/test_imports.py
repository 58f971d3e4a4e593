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


def test_the_neutral_graph_never_imports_torch():
    """``bridge/graph.py`` (the graph, its interpreter, ``Converted``) names no torch module
    in any import, not even one inside a function: the torch front end is ``convert.py``."""
    import ast

    with open(os.path.join(_ROOT, "bridge", "graph.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "torch"], imported


def test_an_onnx_model_loads_and_runs_without_torch():
    """The ONNX front end and the neutral graph load and run a model, layers and all, in a
    process that never imports torch."""
    pytest.importorskip("onnx")
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from onnx import TensorProto, helper, numpy_helper\n"
        "import jaxattr.bridge.graph, jaxattr.bridge.onnx_import\n"
        "from jaxattr import bridge\n"
        "w = np.arange(12, dtype=np.float32).reshape(4, 3) - 6\n"
        "g = helper.make_graph(\n"
        "    [helper.make_node('MatMul', ['x', 'fc.weight'], ['h'], name='fc'),\n"
        "     helper.make_node('Relu', ['h'], ['y'], name='relu')], 'tiny',\n"
        "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 4])],\n"
        "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, ['batch', 3])],\n"
        "    [numpy_helper.from_array(w, 'fc.weight')])\n"
        "conv = bridge.from_onnx(helper.make_model(g))\n"
        "assert isinstance(conv, jaxattr.bridge.graph.Converted), type(conv)\n"
        "x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)\n"
        "want = np.maximum(x @ w, 0)\n"
        "np.testing.assert_allclose(np.asarray(conv(x)), want, rtol=1e-6, atol=1e-6)\n"
        "seen = []\n"
        "def tap(layer, f, p, *xs):\n"
        "    seen.append(layer.name)\n"
        "    return f(p, *xs)\n"
        "y = conv.apply(conv.params, x, intercept=tap)\n"
        "np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6, atol=1e-6)\n"
        "assert seen == list(conv.layers) and len(seen) == 2, (seen, list(conv.layers))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_suite_runs_with_strict_promotion():
    """The root conftest sets strict dtype promotion and raising rank promotion before JAX
    starts (as equinox's suite does): library code must not rely on implicit promotion.
    This holds in every process that runs tests (the xdist workers included)."""
    import jax
    import jax.numpy as jnp

    assert jax.config.jax_numpy_dtype_promotion == "strict"
    assert jax.config.jax_numpy_rank_promotion == "raise"
    with pytest.raises(jax.dtypes.TypePromotionError):
        jnp.ones(2, jnp.bfloat16) + jnp.ones(2, jnp.float32)
    with pytest.raises(ValueError, match="rank_promotion"):
        jnp.ones((2, 3)) + jnp.ones(3)
