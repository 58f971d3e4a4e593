"""Regression tests for silent wrong answers of the bridge (wrong numbers, NaN, ignored
arguments, dropped outputs), each against torch eager (outputs, and input and parameter
gradients by torch autograd) or onnxruntime (ONNX operators; outputs).

NaN and inf must appear exactly where the reference has them (``assert_close`` alone lets a
NaN through: ``NaN > tol`` is False). Tolerance: ``bridge_harness.assert_close``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort  # test oracle only
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from bridge_harness import assert_close
from onnx import TensorProto, helper, numpy_helper
from test_bridge_ops import Fn

from jaxattr import bridge


def same(got, want, what, **tol):
    """``want``'s non-finite entries exactly, ``assert_close`` on the others; ints exactly."""
    got = np.asarray(got)
    if want is None:  # torch has no gradient (not differentiable): zero
        want = np.zeros_like(got)
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if np.issubdtype(want.dtype, np.integer) or want.dtype == np.bool_:
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    got, want = got.astype(np.float64), want.astype(np.float64)
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin], err_msg=f"{what}: non-finite entries")
    assert np.isfinite(got[fin]).all(), f"{what}: NaN/inf where the reference is finite"
    assert_close(np.where(fin, got, 0.0), np.where(fin, want, 0.0), what=what, **tol)


def compare_with_torch(model, *inputs, **tol):
    """Convert ``model``; compare outputs, input and parameter gradients with torch, and the
    per-example ``vmap`` with the batch."""
    model = model.eval()
    conv = bridge.from_torch(model, inputs)
    tin = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    tout = model(*tin)
    touts = tout if isinstance(tout, tuple) else (tout,)
    rng = np.random.default_rng(0)
    cots = [rng.standard_normal(t.shape).astype(np.float32) for t in touts]
    floats = [i for i, t in enumerate(touts) if t.is_floating_point()]
    sum((touts[i] * torch.from_numpy(cots[i])).sum() for i in floats).backward()

    jin = [
        jnp.asarray(x.numpy().astype(np.int32) if x.dtype == torch.int64 else x.numpy())
        for x in inputs
    ]

    def loss(params, *xs):
        out = jax.tree.leaves(conv.fn(params, *xs))
        return sum((out[i] * cots[i]).sum() for i in floats)

    jout = jax.tree.leaves(jax.jit(conv.fn)(conv.params, *jin))
    assert len(jout) == len(touts)
    for i, (a, b) in enumerate(zip(jout, touts, strict=True)):
        same(a, b, f"output {i}", **tol)
    xi = [i for i, x in enumerate(inputs) if x.is_floating_point()]
    grads = jax.jit(jax.grad(loss, argnums=(0, *(i + 1 for i in xi))))(conv.params, *jin)
    for g, i in zip(grads[1:], xi, strict=True):
        same(g, tin[i].grad, f"input grad {i}", **tol)
    for name, p in model.named_parameters():
        same(grads[0][name], p.grad, f"param grad {name}", **tol)

    def one(*xs):
        return jax.tree.map(lambda o: o[0], conv.fn(conv.params, *(x[None] for x in xs)))

    for i, (a, b) in enumerate(
        zip(jax.tree.leaves(jax.jit(jax.vmap(one))(*jin)), jout, strict=True)
    ):
        same(a, b, f"vmap output {i}", **tol)
    return conv


# --------------------------------------------------------------------------- torch
def test_var_and_std_with_positional_keepdim():
    """``aten.var.dim``/``std.dim`` pass ``unbiased, keepdim`` positionally."""

    def f(m, x):
        norm = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-5).sqrt()
        return torch.cat(
            [
                norm,
                x.std(-1, True, True),
                torch.var(x, -1, False, True),
                torch.var(x, 1, correction=0, keepdim=True).expand(-1, 4, -1),
            ],
            -1,
        )

    compare_with_torch(Fn(f), torch.randn(3, 4, 6))


def _masked_attention(m, x):
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[1] = False  # query 1 sees no key
    float_mask = torch.zeros(5, 5)
    float_mask[3] = -torch.inf
    return F.scaled_dot_product_attention(
        x, x * 0.5, x, attn_mask=mask
    ) + F.scaled_dot_product_attention(x, x, x * 2, attn_mask=float_mask)


def test_sdpa_with_a_fully_masked_query_row_gives_zero_and_finite_gradients():
    compare_with_torch(Fn(_masked_attention), torch.randn(3, 2, 5, 4))


def test_safe_softmax_gives_zero_and_a_finite_gradient_on_all_minus_inf_rows():
    def f(m, x):
        mask = torch.zeros(4, 6)
        mask[1] = -torch.inf  # an additive mask: the gradient reaches x through the sum
        return torch.ops.aten._safe_softmax(x + mask.masked_fill(x > 1.0, -torch.inf), -1)

    compare_with_torch(Fn(f), torch.randn(3, 4, 6))


def test_sdpa_with_dropout_is_refused():
    x = torch.randn(2, 2, 5, 4)
    model = Fn(lambda m, x: F.scaled_dot_product_attention(x, x, x, dropout_p=0.1)).eval()
    with pytest.raises(bridge.TrainModeError, match="dropout_p=0.1"):  # at conversion
        bridge.from_torch(model, x)


def _ties(*shape):
    """Few distinct values, so that windows hold tied maxima (torch: the first one wins)."""
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(1)).float()


def test_max_pool_indices_match_torch():
    def f(m, x):
        vd, idil = F.max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True, return_indices=True)
        v2, i2 = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
        v1, i1 = F.max_pool1d(x.flatten(2), 4, 3, 2, return_indices=True)
        v3, i3 = F.max_pool3d(
            x[:, None], (2, 3, 2), (1, 2, 2), (1, 1, 0), ceil_mode=True, return_indices=True
        )
        va, ia = F.adaptive_max_pool2d(x, (3, 4), return_indices=True)
        return vd, idil, v2, i2, v1, i1, v3, i3, va, ia

    compare_with_torch(Fn(f), _ties(2, 3, 7, 9))
    compare_with_torch(Fn(f), torch.randn(2, 3, 7, 9))


def test_max_pool_then_max_unpool():
    def f(m, x):
        v, i = F.max_pool2d(x, 2, return_indices=True)
        return F.max_unpool2d(v * 3.0, i, 2, output_size=x.shape[-2:])

    compare_with_torch(Fn(f), torch.randn(2, 3, 7, 6))


@pytest.mark.parametrize("order", [2, 1, 3, 0.5, 0, float("inf"), -float("inf"), -1])
def test_vector_norm_of_zero_vectors_and_infinite_and_zero_orders(order):
    def f(m, x):
        return torch.linalg.vector_norm(x, order, dim=-1)

    x = torch.randn(3, 4, 5)
    x[:, 1] = 0.0  # all-zero vectors: torch's gradient is 0 there
    x[0, 2, 3] = 0.0
    compare_with_torch(Fn(f), x)


def test_index_put_with_duplicate_indices_gives_every_duplicate_the_gradient():
    idx = torch.tensor([0, 2, 0, 4])

    def f(m, x):
        y = x.clone()
        y[:, idx] = x[:, 1:5] * 2.0
        return y

    compare_with_torch(Fn(f), torch.randn(3, 6))


def test_clamp_with_min_above_max_gives_max():
    class Clamp(nn.Module):
        def __init__(self):
            super().__init__()
            self.lo = nn.Parameter(torch.tensor([0.5, -1.0, 0.2, -0.3]))
            self.hi = nn.Parameter(torch.tensor([-0.5, 1.0, 0.2, 0.4]))

        def forward(self, x):
            return torch.cat([torch.clamp(x, 0.5, -0.5), torch.clamp(x, self.lo, self.hi)], -1)

    compare_with_torch(Clamp(), torch.randn(3, 5, 4) * 2)


def test_digamma_gradient_at_negative_x():
    base = torch.tensor([-9.7, -8.4, -7.5, -6.2, -5.3, -3.6, -1.2, -0.4, 0.3, 2.5, 7.1, 40.2])
    x = base + 0.05 * torch.rand(3, 12, generator=torch.Generator().manual_seed(0))
    compare_with_torch(Fn(lambda m, x: torch.digamma(x)), x)


# --------------------------------------------------------------------------- ONNX
R = np.random.default_rng(3)


def onnx_model(nodes, inputs, inits=(), opset=18, outputs=("y",)):
    """A graph of ``nodes`` with graph ``inputs`` {name: array} and initializers ``inits``
    ({name: array}, or TensorProtos)."""
    vi = [
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for k, v in inputs.items()
    ]
    out = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
    inits = (
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
        if isinstance(inits, dict)
        else list(inits)
    )
    model = helper.make_model(
        helper.make_graph(nodes, "g", vi, out, inits),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    return onnx.shape_inference.infer_shapes(model)


def compare_with_onnxruntime(model, inputs, **tol):
    """Outputs against onnxruntime; returns the converted model."""
    ref = ort.InferenceSession(model.SerializeToString()).run(None, inputs)
    conv = bridge.from_onnx(model)
    got = jax.jit(conv.fn)(conv.params, *inputs.values())
    got = got if isinstance(got, tuple) else (got,)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert np.asarray(a).dtype == b.dtype or (
            b.dtype == np.int64 and np.asarray(a).dtype == np.int32
        ), f"output {i}: dtype {np.asarray(a).dtype} != onnxruntime {b.dtype}"
        same(a, b, f"output {i}", **tol)
    return conv


def finite_input_grad(conv, x):
    cot = R.standard_normal(np.shape(conv(x))).astype(np.float32)
    g = jax.grad(lambda x: (conv.fn(conv.params, x) * cot).sum())(x)
    assert np.isfinite(np.asarray(g)).all(), "NaN/inf in the input gradient"


def test_onnx_lp_pool_uses_dilations_and_has_a_finite_gradient_on_zero_windows():
    x = R.normal(size=(2, 3, 7, 8)).astype(np.float32)
    x[:, :, :4, :4] = 0.0  # all-zero windows
    for p, dil in ((2, [2, 1]), (3, [1, 3]), (1, [2, 2])):
        node = helper.make_node(
            "LpPool",
            ["x"],
            ["y"],
            kernel_shape=[2, 3],
            strides=[1, 2],
            dilations=dil,
            pads=[1, 0, 0, 1],
            p=p,
        )
        conv = compare_with_onnxruntime(onnx_model([node], {"x": x}), {"x": x})
        finite_input_grad(conv, x)


def test_onnx_lp_normalization_of_an_all_zero_slice_is_zero():
    x = R.normal(size=(3, 4, 5)).astype(np.float32)
    x[1, :, 2] = 0.0
    x[2, 3] = 0.0
    for p, axis in ((2, 1), (1, 1), (2, -1)):
        node = helper.make_node("LpNormalization", ["x"], ["y"], axis=axis, p=p)
        conv = compare_with_onnxruntime(onnx_model([node], {"x": x}), {"x": x})
        finite_input_grad(conv, x)


def test_onnx_pow_keeps_an_integer_base_integer():
    x = np.array([[0, 1, 2, 3], [4, 5, 7, 9]], np.int32)
    for e in (np.array([2.0, 0.5, 3.0, 1.5], np.float32), np.array(2.5, np.float32)):
        compare_with_onnxruntime(
            onnx_model([helper.make_node("Pow", ["x", "e"], ["y"])], {"x": x}, {"e": e}), {"x": x}
        )
    # all static (an initializer base): NumPy's int64 stays int64
    model = onnx_model(
        [helper.make_node("Pow", ["b", "e"], ["p"]), helper.make_node("Add", ["x", "p"], ["y"])],
        {"x": x.astype(np.int64)},
        {"b": np.array([1, 2, 3, 6], np.int64), "e": np.float32(1.5)},
    )
    compare_with_onnxruntime(model, {"x": x.astype(np.int64)})


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_onnx_resize_tf_crop_and_resize_fills_outside_with_the_extrapolation_value(mode):
    x = R.normal(size=(1, 2, 5, 6)).astype(np.float32)
    roi = np.array([0, 0, -0.3, 0.2, 1, 1, 1.2, 0.9], np.float32)
    node = helper.make_node(
        "Resize",
        ["x", "roi", "", "sz"],
        ["y"],
        mode=mode,
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-7.5,
    )
    model = onnx_model([node], {"x": x}, {"roi": roi, "sz": np.array([1, 2, 8, 5])})
    compare_with_onnxruntime(model, {"x": x})


#: values around every float8 format's range, halfway points, subnormals, inf and NaN
F8_VALUES = np.concatenate(
    [
        np.linspace(-70000, 70000, 2001),
        np.linspace(-600, 600, 2401),
        np.linspace(-0.02, 0.02, 401),
        [np.inf, -np.inf, np.nan, 464.0, -0.0],
    ]
).astype(np.float32)


@pytest.mark.parametrize(
    "to",
    [
        TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ,
        TensorProto.FLOAT8E5M2,
        TensorProto.FLOAT8E5M2FNUZ,
    ],
)
def test_onnx_saturating_cast_to_float8_matches_onnxruntime(to):
    x = F8_VALUES[None]
    like = [helper.make_tensor("like", to, [1], [0.0])]
    for first, inits in (
        (helper.make_node("Cast", ["x"], ["c"], to=to), ()),
        (helper.make_node("CastLike", ["x", "like"], ["c"]), like),
    ):
        model = onnx_model(
            [first, helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)],
            {"x": x},
            inits,
            opset=21,
        )
        compare_with_onnxruntime(model, {"x": x})


@pytest.mark.parametrize(
    "to",
    [
        TensorProto.INT4,
        TensorProto.UINT4,
        TensorProto.INT2,
        TensorProto.UINT2,
        TensorProto.FLOAT4E2M1,
    ],
)
@pytest.mark.parametrize("op", ["Cast", "CastLike"])
def test_onnx_cast_to_narrow_types_is_refused(to, op):
    x = np.array([[-1000.0, -3.3, 0.1, 1.7, 500.0, 7.5]], np.float32)
    first = (
        helper.make_node("Cast", ["x"], ["c"], to=to)
        if op == "Cast"
        else helper.make_node("CastLike", ["x", "like"], ["c"])
    )
    model = onnx_model(
        [first, helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)],
        {"x": x},
        [helper.make_tensor("like", to, [1], [0])],
        opset=25,
    )
    name = TensorProto.DataType.Name(to)
    # a Cast is refused at conversion; a CastLike's type is known only when traced
    with pytest.raises(bridge.UnsupportedOpsError, match=rf"{op} \(to={name}\)"):
        conv = bridge.from_onnx(model)
        assert op == "CastLike", "a Cast must be refused at conversion"
        conv(x)


def test_onnx_non_saturating_float8_cast_is_refused():
    x = np.array([[-1000.0, 500.0]], np.float32)
    model = onnx_model(
        [
            helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT8E4M3FN, saturate=0),
            helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT),
        ],
        {"x": x},
        opset=21,
    )
    with pytest.raises(bridge.UnsupportedOpsError, match="saturate=0"):  # at conversion
        bridge.from_onnx(model)
