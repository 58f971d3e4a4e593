"""Peer suite: the ONNX "light" model zoo shipped inside the installed ``onnx`` package.

``onnx/backend/test/data/light/light_*.onnx`` are ImageNet models (AlexNet, DenseNet-121,
Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) whose weights are
built inside the graph by ``ConstantOfShape`` nodes, so they are small files. Each model is
converted with :func:`jaxattr.bridge.from_onnx` and compared with onnxruntime (test oracle
only) eagerly (``conv.fn``) and under ``jit`` (``conv(x)``), on the logits: the final
``Softmax`` is dropped, since with constant weights every class gets the same probability
and the softmax would hide any error.

Before the fix, ResNet-50 and SqueezeNet gave wrong logits under ``jit`` only: the weights
were NumPy constants baked into the trace. They are ``params`` leaves now; the test also
checks that every ``ConstantOfShape``-built kernel is one.

Run: ``python -m pytest -m peer tests/peer/test_onnx_light.py -q -p no:cacheprovider``
(about 4 minutes on 2 CPU cores, most of it DenseNet-121 and Inception).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")  # test oracle only

from jaxattr import bridge  # noqa: E402

pytestmark = pytest.mark.peer

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = (
    sorted(
        f[len("light_") : -len(".onnx")]
        for f in os.listdir(LIGHT)
        if f.startswith("light_") and f.endswith(".onnx")
    )
    if os.path.isdir(LIGHT)
    else []
)

#: ``|jax - ort| <= RTOL |ort| + ATOL max|ort|`` per element (float32, deep models)
RTOL, ATOL = 1e-4, 1e-4


def _logits_model(name: str):
    """The model without its final Softmax, and its (first non-initializer) input."""
    model = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    g = model.graph
    if g.node[-1].op_type == "Softmax" and g.node[-1].output[0] == g.output[0].name:
        g.output[0].name = g.node[-1].input[0]
        g.node.pop()
    inits = {t.name for t in g.initializer}
    inp = next(i for i in g.input if i.name not in inits)
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    return model, inp.name, shape


def _close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bound = RTOL * np.abs(want) + ATOL * np.abs(want).max()
    err = np.abs(got - want)
    assert np.all(err <= bound), (
        f"{what}: {int((err > bound).sum())}/{err.size} elements off; max error "
        f"{err.max():.3g}, max |ref| {np.abs(want).max():.3g}"
    )


def test_the_light_models_are_shipped():
    assert len(MODELS) >= 9, f"expected the 9 light models in {LIGHT}, found {MODELS}"


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_onnxruntime_eagerly_and_under_jit(name):
    model, inp, shape = _logits_model(name)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    ).run(None, {inp: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opset 9 upgraded to 13
        conv = bridge.from_onnx(model)
    _close(conv.fn(conv.params, x), ref, f"{name} eager")
    _close(conv(x), ref, f"{name} jit")
    # every kernel built by ConstantOfShape is a parameter (an argument of the compiled
    # program), never a constant baked into it
    built = {o for n in model.graph.node if n.op_type == "ConstantOfShape" for o in n.output}
    kernels = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    missing = sorted((built & kernels) - set(conv.params))
    assert not missing, f"{name}: kernels baked into the trace: {missing[:5]}"
