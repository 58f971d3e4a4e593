"""Op coverage: small modules, each compared with torch (outputs and all gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from bridge_harness import check_model


class Fn(nn.Module):
    """Wraps a function of the input (and optional sub-modules) as a module."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(self, x)


def img(c=3, h=8, w=8):
    return torch.randn(3, c, h, w)


SDPA_MASK = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 0.1

CASES = {
    "conv1d_dilated": (
        Fn(lambda m, x: m.c(x), c=nn.Conv1d(3, 4, 3, dilation=2, padding=2)),
        torch.randn(3, 3, 10),
    ),
    "conv3d_stride": (
        Fn(lambda m, x: m.c(x), c=nn.Conv3d(2, 4, 3, stride=2, padding=1)),
        torch.randn(3, 2, 5, 6, 6),
    ),
    "conv2d_grouped_same": (
        Fn(lambda m, x: m.c(x), c=nn.Conv2d(4, 6, 3, groups=2, padding="same")),
        img(4),
    ),
    "conv_transpose2d_groups": (
        Fn(
            lambda m, x: m.c(x),
            c=nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        ),
        img(4, 5, 5),
    ),
    "conv_transpose1d": (
        Fn(lambda m, x: m.c(x), c=nn.ConvTranspose1d(3, 2, 4, stride=3)),
        torch.randn(3, 3, 6),
    ),
    "rnn_relu_bidirectional": (
        Fn(
            lambda m, x: m.rnn(x)[0] * m.rnn(x)[1].mean((0, 2))[:, None, None],
            rnn=nn.RNN(
                3, 4, num_layers=2, nonlinearity="relu", bidirectional=True, batch_first=True
            ),
        ),
        torch.randn(3, 5, 3),
    ),
    "pools": (
        Fn(
            lambda m, x: torch.cat(
                [
                    F.max_pool2d(x, 3, 2, 1, ceil_mode=True).flatten(1),
                    F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False).flatten(1),
                    F.avg_pool2d(x, 2).flatten(1),
                    F.avg_pool2d(x, 3, 2, 1).flatten(1),
                    F.adaptive_avg_pool2d(x, (3, 5)).flatten(1),
                    F.adaptive_max_pool2d(x, 3).flatten(1),
                    F.max_pool1d(x.flatten(2), 4).flatten(1),
                ],
                1,
            )
        ),
        img(3, 9, 9),
    ),
    "norms": (
        Fn(
            lambda m, x: m.ln(m.gn(x)) + m.inorm(x) + m.bn(x),
            gn=nn.GroupNorm(2, 4),
            inorm=nn.InstanceNorm2d(4, affine=True),
            ln=nn.LayerNorm([4, 8, 8]),
            bn=nn.BatchNorm2d(4),
        ),
        img(4),
    ),
    "upsample": (
        Fn(
            lambda m, x: torch.cat(
                [
                    F.interpolate(x, scale_factor=2, mode="nearest"),
                    F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False),
                    F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=True),
                ],
                1,
            )
        ),
        img(),
    ),
    "upsample_odd": (
        Fn(
            lambda m, x: (
                F.interpolate(x, size=(11, 7), mode="bilinear")
                + F.interpolate(x, size=(11, 7), mode="nearest")
            )
        ),
        img(2, 5, 4),
    ),
    "pads": (
        Fn(
            lambda m, x: (
                F.pad(x, (1, 2, 0, 1)).sum((2, 3), keepdim=True)
                + F.pad(x, (2, 2, 1, 1), "reflect").mean(1, keepdim=True)
                + F.pad(x, (2, 2, 1, 1), "replicate") * 0.5
                + F.pad(x, (2, 2, 1, 1), value=0.3)
            )
        ),
        img(2, 6, 6),
    ),
    "activations": (
        Fn(
            lambda m, x: torch.cat(
                [
                    F.leaky_relu(x, 0.2),
                    F.elu(x),
                    F.selu(x),
                    F.celu(x, 0.7),
                    F.gelu(x),
                    F.gelu(x, approximate="tanh"),
                    F.silu(x),
                    torch.sigmoid(x),
                    torch.tanh(x),
                    F.softplus(x, beta=2.0),
                    F.hardswish(x),
                    F.hardsigmoid(x),
                    F.hardtanh(x, -0.5, 0.7),
                    F.relu6(x * 4),
                    F.mish(x),
                    F.logsigmoid(x),
                    m.prelu(x),
                    F.relu(x),
                    F.softmax(x, -1),
                    F.log_softmax(x, 1),
                ],
                1,
            ),
            prelu=nn.PReLU(3, 0.2),
        ),
        img(3, 4, 4),
    ),
    "mha_masks": (
        Fn(
            lambda m, x: (
                m.mha(
                    x,
                    x,
                    x,
                    attn_mask=torch.triu(torch.ones(5, 5, dtype=torch.bool), 1),
                    need_weights=False,
                )[0]
                + m.mha(x, x, x, key_padding_mask=torch.arange(5)[None].expand(x.shape[0], 5) > 3)[
                    0
                ]
            ),
            mha=nn.MultiheadAttention(8, 2, batch_first=True),
        ),
        torch.randn(3, 5, 8),
    ),
    "sdpa": (
        Fn(
            lambda m, x: (
                F.scaled_dot_product_attention(x, x * 0.5, x, is_causal=True)
                + F.scaled_dot_product_attention(x, x, x, attn_mask=SDPA_MASK)
            )
        ),
        torch.randn(3, 2, 6, 4),
    ),
    "elementwise_reductions": (
        Fn(
            lambda m, x: torch.stack(
                [
                    (x.exp().log1p() - x.abs().sqrt() * x.sign()).sum((1, 2)),
                    x.amax(1).mean(1) + x.amin(2).sum(1),
                    x.var(1).mean(1) + x.std(2, unbiased=False).mean(1),
                    x.cumsum(2).pow(2).mean((1, 2)),
                    torch.where(x > 0.3, x, x * x).sum((1, 2)),
                    torch.clamp(x, -0.5, 0.5).prod(2).sum(1),
                    x.norm(dim=2).sum(1),
                    torch.logsumexp(x, 2).sum(1),
                    (x / (x.abs() + 1)).rsqrt().nan_to_num().sum((1, 2)),
                    torch.maximum(x, x.flip(2)).sum((1, 2))
                    + x.max(1).values.sum(1)
                    + torch.minimum(x, x.roll(1, 2)).sum((1, 2)),
                ],
                1,
            )
        ),
        torch.randn(3, 4, 6),
    ),
    "indexing_shapes": (
        Fn(
            lambda m, x: torch.cat(
                [
                    x[:, 1:3].reshape(x.shape[0], -1),
                    x.transpose(1, 2)[:, :, ::2].flatten(1),
                    x.permute(0, 2, 1).contiguous().view(x.shape[0], -1)[:, :5],
                    torch.stack(x.split(2, 1), 1).sum(1).flatten(1),
                    x.chunk(3, 2)[1].flatten(1),
                    x[:, [0, 2]].flatten(1),
                    x.gather(2, torch.ones_like(x[:, :, :2], dtype=torch.long)).flatten(1),
                    x.unsqueeze(1).expand(-1, 2, -1, -1).flatten(1),
                    x[:, -1],
                    x.select(2, 0),
                    torch.index_select(x, 2, torch.tensor([5, 0])).flatten(1),
                    x.repeat(1, 1, 2).flatten(1),
                    torch.tril(x[:, :, :4]).flatten(1),
                    x.masked_fill(x > 0.5, -1.0).flatten(1),
                ],
                1,
            )
        ),
        torch.randn(3, 4, 6),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_family(name):
    torch.manual_seed(0)
    model, x = CASES[name]
    model = model.eval()
    for p in model.parameters():
        if p.dim() == 1:  # non-trivial affine params
            with torch.no_grad():
                p.uniform_(0.5, 1.5)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
    check_model(
        model, (x,), name=name, atol=2e-5, param_grads=any(True for _ in model.parameters())
    )


# --------------------------------------------------------------------------- ops of issue 14
def check_fn(fn, *inputs, atol=2e-5, rtol=1e-5, dynamic_batch=False):
    """Convert ``fn(*inputs)`` (as a module whose forward takes the inputs), run it jitted and
    compare every output (integers exactly, NaN/inf where torch has them) and the gradient
    of every float input for a random cotangent with eager torch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bridge_harness import assert_close

    from jaxattr import bridge

    names = ", ".join(f"x{i}" for i in range(len(inputs)))
    ns = {"fn": fn}
    exec(f"def forward(self, {names}):\n    return fn({names})", ns)
    model = type("FnModule", (nn.Module,), {"forward": ns["forward"]})().eval()
    conv = bridge.from_torch(model, tuple(inputs), dynamic_batch=dynamic_batch)

    tin = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    tout = model(*tin)
    touts = list(tout) if isinstance(tout, (tuple, list)) else [tout]
    rng = np.random.default_rng(0)
    cots = [rng.standard_normal(t.shape).astype(np.float32) for t in touts]
    diff = [i for i, t in enumerate(touts) if t.is_floating_point() and t.requires_grad]
    wrt = [i for i, x in enumerate(inputs) if x.is_floating_point()]
    if not diff:
        wrt = []
    want = (
        torch.autograd.grad(
            [touts[i] for i in diff],
            [tin[i] for i in wrt],
            [torch.from_numpy(cots[i]) for i in diff],
            allow_unused=True,
        )
        if wrt
        else []
    )
    jin = [
        jnp.asarray(x.numpy().astype(np.int32) if x.dtype == torch.int64 else x.numpy())
        for x in inputs
    ]

    def loss(*xs):
        full = list(jin)
        for i, x in zip(wrt, xs, strict=True):
            full[i] = x
        out = jax.tree.leaves(conv.fn(conv.params, *full))
        return sum((out[i] * cots[i]).sum() for i in diff)

    jout = jax.tree.leaves(jax.jit(conv.fn)(conv.params, *jin))
    assert len(jout) == len(touts)
    for k, (a, b) in enumerate(zip(jout, touts, strict=True)):
        if not b.is_floating_point():
            np.testing.assert_array_equal(np.asarray(a), b.numpy(), err_msg=f"output {k}")
        else:
            assert_close(a, b, rtol=rtol, atol=atol, what=f"output {k}")
    got = (
        jax.jit(jax.grad(loss, argnums=tuple(range(len(wrt)))))(*[jin[i] for i in wrt])
        if wrt
        else []
    )
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(
            a,
            torch.zeros_like(inputs[wrt[k]]) if b is None else b,
            rtol=rtol,
            atol=atol,
            what=f"gradient of input {wrt[k]}",
        )
    return conv


def _r(*shape, seed=0, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


_IDX = torch.tensor([0, 2, 2, 5])

FN_CASES = {
    "grid_sample_2d": (
        lambda x, g: torch.cat(
            [
                F.grid_sample(x, g, mode=m, padding_mode=p, align_corners=a).flatten(1)
                for m in ("bilinear", "nearest", "bicubic")
                for p in ("zeros", "border", "reflection")
                for a in (False, True)
            ],
            1,
        ),
        (_r(2, 3, 5, 6), _r(2, 4, 7, 2, seed=1, lo=-1.3, hi=1.3)),
    ),
    "grid_sample_3d": (
        lambda x, g: torch.cat(
            [
                F.grid_sample(x, g, mode=m, padding_mode=p, align_corners=a).flatten(1)
                for m in ("bilinear", "nearest")
                for p in ("zeros", "border", "reflection")
                for a in (False, True)
            ],
            1,
        ),
        (_r(2, 2, 4, 5, 3), _r(2, 3, 2, 4, 3, seed=1, lo=-1.3, hi=1.3)),
    ),
    "scatter_reduce": (
        lambda x: torch.cat(
            [
                x.scatter_reduce(
                    1,
                    (torch.arange(3)[:, None] + _IDX) % 6,
                    x[:, :4] * torch.tensor([2.0, 0.0, 1.5, -1.0]) + 0.25,
                    r,
                    include_self=inc,
                )
                for r in ("sum", "prod", "mean", "amax", "amin")
                for inc in (True, False)
            ],
            1,
        ),
        (_r(3, 6),),
    ),
    "index_reduce": (
        lambda x: torch.cat(
            [
                x.index_reduce(1, _IDX, x[:, :4] * 1.5 - 0.2, r, include_self=inc)
                for r in ("prod", "mean", "amax", "amin")
                for inc in (True, False)
            ],
            1,
        ),
        (_r(3, 6),),
    ),
    "embedding_bag": (
        lambda w, ids, psw: torch.cat(
            [
                F.embedding_bag(ids, w, mode="sum", per_sample_weights=psw),
                F.embedding_bag(ids, w, mode="mean", padding_idx=3),
                F.embedding_bag(ids, w, mode="max"),
                F.embedding_bag(ids.flatten(), w, torch.tensor([0, 4, 4, 9]), mode="mean"),
                F.embedding_bag(
                    ids.flatten(),
                    w,
                    torch.tensor([0, 4, 9, 15]),
                    mode="sum",
                    include_last_offset=True,
                ),
            ],
            0,
        ),
        (
            _r(10, 4),
            torch.tensor([[1, 3, 3, 7, 0], [3, 3, 3, 2, 9], [4, 5, 6, 8, 1]]),
            _r(3, 5, seed=2),
        ),
    ),
    "bilinear": (
        lambda a, b, w, bias: (
            F.bilinear(a, b, w, bias) + F.bilinear(a[:, None], b[:, None], w)[:, 0]
        ),
        (_r(3, 4), _r(3, 5, seed=1), _r(6, 4, 5, seed=2), _r(6, seed=3)),
    ),
    "upsample_antialias": (
        lambda x: torch.cat(
            [
                F.interpolate(x, size=s, mode=m, antialias=True, align_corners=a).flatten(1)
                for s in ((4, 3), (7, 12), (13, 5))
                for m in ("bilinear", "bicubic")
                for a in (False, True)
            ],
            1,
        ),
        (_r(2, 3, 9, 11),),
    ),
    "cdist": (
        lambda x, y: torch.cat(
            [
                torch.cdist(x, torch.cat([x[:, :2], y], 1), p=p).flatten()
                for p in (2.0, 1.0, 0.5, 3.0, float("inf"), 0.0)
            ]
        ),
        (_r(2, 5, 4), _r(2, 6, 4, seed=1)),
    ),
    "pdist": (
        lambda x: torch.cat(
            [F.pdist(torch.cat([x, x[:1]]), p=p) for p in (2.0, 1.0, 1.5, float("inf"))]
        ),
        (_r(5, 3),),
    ),
    "unfold": (
        lambda x: torch.cat(
            [
                x.unfold(2, 3, 2).flatten(),
                x.unfold(0, 2, 1).flatten(),
                x.unfold(-1, 9, 1).flatten(),
                x[0, 0, 0].unfold(0, 1, 1),
            ]
        ),
        (_r(3, 4, 9),),
    ),
    "round_decimals": (
        lambda x: torch.cat([torch.round(x * 100, decimals=d) for d in (0, 1, 2, -1)]),
        (_r(4, 5),),
    ),
    "addmv_addbmm": (
        lambda b, m, v, b3, p, q: torch.cat(
            [
                torch.addmv(b, m, v),
                torch.addmv(b, m, v, beta=0.5, alpha=-2.0),
                torch.addmv(b * float("nan"), m, v, beta=0.0),
                torch.addbmm(b3, p, q).flatten(),
                torch.addbmm(b3, p, q, beta=2.0, alpha=0.5).flatten(),
                torch.addmm(b3 * float("inf"), p[0], q[0], beta=0).flatten(),
            ]
        ),
        (
            _r(3),
            _r(3, 4, seed=1),
            _r(4, seed=2),
            _r(3, 5, seed=3),
            _r(2, 3, 4, seed=4),
            _r(2, 4, 5, seed=5),
        ),
    ),
    "cummax_cummin": (
        lambda x: (*torch.cummax(x, 1), *torch.cummin(x, 0), *torch.cummax(x[0, 0], 0)),
        (torch.tensor([[1.0, 3.0, 3.0, 2.0, 5.0, -1.0], [0.5, 0.2, 0.7, 0.7, 0.1, 0.9]]),),
    ),
    "median_mode_kthvalue": (
        lambda x: (
            *torch.median(x, 1),
            *torch.median(x, 0, keepdim=True),
            torch.median(x),
            *torch.nanmedian(x, 1),
            torch.nanmedian(x),
            *torch.kthvalue(x, 2, 1),
            *torch.kthvalue(x, 3, 0, keepdim=True),
            *torch.mode(x, 1),
            *torch.mode(x, 0),
        ),
        (
            torch.tensor(
                [[1.0, 3.0, 3.0, 2.0, 5.0], [0.5, 0.2, 0.7, 0.7, 0.1], [2.0, 2.0, 4.0, 1.0, 1.0]]
            ),
        ),
    ),
    "median_nan": (
        lambda x: (
            *torch.median(x, 1),
            *torch.nanmedian(x, 1),
            torch.median(x),
            torch.nanmedian(x[:1]),
        ),
        (torch.tensor([[1.0, float("nan"), 2.0, 0.5], [4.0, 3.0, 2.0, 1.0]]),),
    ),
    "bucketize_searchsorted": (
        lambda x, s: (
            torch.bucketize(x, torch.tensor([-0.5, 0.0, 0.5])),
            torch.bucketize(x, torch.tensor([-0.5, 0.0, 0.5]), right=True, out_int32=True),
            torch.searchsorted(torch.sort(s).values, x),
            torch.searchsorted(torch.sort(s).values, x, side="right"),
            torch.searchsorted(s, x, sorter=torch.argsort(s)),
            torch.searchsorted(torch.tensor([-0.5, 0.0, 0.5]), x[0]),
        ),
        (torch.tensor([[-0.7, -0.5, 0.0, 0.2], [0.5, 0.9, -0.1, 0.0]]), _r(2, 5)),
    ),
    "logit_eps": (
        lambda x: torch.cat([torch.logit(x, 0.1), torch.logit(x, 0.25), torch.logit(x)]),
        (_r(4, 5, lo=0.02, hi=0.98),),
    ),
    "bool_mask_assign": (lambda x: _masked_assign(x), (_r(3, 5),)),
    "batch_norm_functional": (
        lambda x, w, b: torch.cat(
            [
                F.batch_norm(x, torch.zeros(3) + 0.2, torch.ones(3) * 1.5, w, b, False).flatten(),
                torch.ops.aten._native_batch_norm_legit(
                    x, w, b, torch.zeros(3), torch.ones(3), False, 0.1, 1e-5
                )[0].flatten(),
            ]
        ),
        (_r(2, 3, 4), _r(3, seed=1), _r(3, seed=2)),
    ),
    "replicate_pad_negative": (
        lambda x: torch.cat(
            [
                F.pad(x, (-1, 2), mode="replicate").flatten(1),
                F.pad(x, (2, -2), mode="replicate").flatten(1),
                F.pad(x, (-1, 2), mode="circular").flatten(1),
                F.pad(x, (2, 1), mode="reflect").flatten(1),
            ],
            1,
        ),
        (_r(2, 3, 5),),
    ),
    "reductions_0d": (
        lambda x: (
            x.sum(0),
            x.sum(-1, keepdim=True),
            x.mean(0),
            x.amax(0),
            x.max(0)[0],
            x.argmax(-1),
            torch.logsumexp(x, 0),
            x.cumsum(0),
            x.softmax(0),
            x.log_softmax(-1),
            x.prod(0),
            x.norm(dim=0),
            x.sort(0)[0],
            torch.index_select(x, 0, torch.tensor([0])),
        ),
        (torch.tensor(0.7),),
    ),
}


def _masked_assign(x):
    y = x.clone()
    y[y > 0.3] = 2.0
    z = x.clone()
    z[:, torch.tensor([True, False, True, False, True])] = x[:, :3] * 3
    return torch.cat([y.flatten(), z.flatten()])


# Slow: every mode x padding x align_corners combination of grid_sample in one graph (50
# CPU-s); by default each mode runs with reflection padding in test_grid_sample_batch.
SLOW_FN_CASES = {"grid_sample_2d", "grid_sample_3d"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FN_CASES else n
        for n in sorted(FN_CASES)
    ],
)
def test_op_issue14(name):
    fn, inputs = FN_CASES[name]
    check_fn(fn, *inputs)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_grid_sample_batch(mode):
    """grid_sample as a layer of a batched model: dynamic batch and vmap included."""
    model = Fn(
        lambda m, x: F.grid_sample(
            x, m.c(x).permute(0, 2, 3, 1).tanh() * 1.2, mode=mode, padding_mode="reflection"
        ),
        c=nn.Conv2d(3, 2, 3, padding=1),
    )
    check_model(model.eval(), (img(3, 6, 7),), name=f"grid_sample_{mode}", atol=2e-5)


def test_embedding_bag_and_bilinear_layers():
    model = Fn(
        lambda m, x: m.bil(m.bag((x.abs() * 3).long().clamp(max=7)), x),
        bag=nn.EmbeddingBag(8, 4, mode="mean"),
        bil=nn.Bilinear(4, 4, 3),
    )
    check_model(model.eval(), (torch.randn(3, 4),), name="bag_bilinear", atol=2e-5)


def test_antialias_layer():
    model = Fn(
        lambda m, x: m.c(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)),
        c=nn.Conv2d(3, 2, 3),
    )
    check_model(model.eval(), (img(3, 12, 10),), name="antialias", atol=2e-5)


def _refusals(fn, *inputs):
    """``lowerings.refusal`` on every node of ``fn``'s decomposed graph, as the conversion
    would call it (tensors by their example values)."""
    from jaxattr.bridge import convert, lowerings
    from torch.fx.node import map_arg

    names = ", ".join(f"x{i}" for i in range(len(inputs)))
    ns = {"fn": fn}
    exec(f"def forward(self, {names}):\n    return fn({names})", ns)
    model = type("FnModule", (nn.Module,), {"forward": ns["forward"]})().eval()
    ep = convert._decompose(torch.export.export(model, tuple(inputs)))
    out = {}
    for n in ep.graph.nodes:
        if n.op == "call_function":
            key = convert._op_key(n.target)
            args, kwargs = map_arg((n.args, n.kwargs), lambda a: a.meta.get("val"))
            why = lowerings.refusal(key, args, kwargs, n.meta.get("val"))
            if why:
                out[key] = why
    return out


REFUSED = {
    "complex_cast": (lambda x: x.to(torch.complex64).abs(), "aten._to_copy.default"),
    "bool_mask_read": (lambda x: x[x > 0].sum(), "aten.index.Tensor"),
    "bool_mask_add": (lambda x: _add_through_mask(x), "aten.index.Tensor"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusal_from_graph(name):
    """Calls a lowering cannot express are found from the graph alone, with a reason (what
    the conversion can check before anything runs)."""
    fn, op = REFUSED[name]
    why = _refusals(fn, _r(2, 3))
    assert op in why, why


@pytest.mark.parametrize("name", ["complex_cast", "bool_mask_read", "bool_mask_add"])
def test_refused_is_named(name):
    """Converting such a call is a named error (UnsupportedOpsError) at conversion, before
    anything runs, never an unnamed crash."""
    from jaxattr import bridge

    model = type("M", (nn.Module,), {"forward": lambda self, x: REFUSED[name][0](x)})()
    with pytest.raises(bridge.UnsupportedOpsError):
        bridge.from_torch(model.eval(), _r(2, 3))


def _add_through_mask(x):
    y = x.clone()
    y[x < 0] += 1.0
    return y


# linear algebra: torch.export checks errors through an effect token (with_effects)
_A = _r(2, 4, 4, seed=5) + 4 * torch.eye(4)
_SPD = _A @ _A.transpose(-1, -2) + torch.eye(4)
_AT = torch.ops.aten
LINALG = {  # name: (torch op, inputs, keyword arguments)
    "inv_ex": (_AT.linalg_inv_ex.default, (_A,), {}),
    "cholesky_ex": (_AT.linalg_cholesky_ex.default, (_SPD,), {}),
    "cholesky_ex_upper": (_AT.linalg_cholesky_ex.default, (_SPD,), {"upper": True}),
    "solve_ex": (_AT._linalg_solve_ex.default, (_A, _r(2, 4, 3)), {}),
    "solve_ex_vector": (_AT._linalg_solve_ex.default, (_A, _r(2, 4)), {}),
    "solve_ex_right": (_AT._linalg_solve_ex.default, (_A, _r(2, 3, 4)), {"left": False}),
    "solve_ex_public": (_AT.linalg_solve_ex.default, (_A, _r(2, 4, 3)), {}),  # (X, info)
    "lu_factor_ex": (_AT.linalg_lu_factor_ex.default, (_A,), {}),
}


@pytest.mark.parametrize("name", sorted(LINALG))
def test_linalg_lowering(name):
    """The lowering itself against torch: outputs and the gradients of the differentiable
    ones (the conversion of these graphs waits for convert.py to accept effect tokens)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bridge_harness import assert_close
    from jaxattr.bridge.lowerings import LOWERINGS

    op, xs, kw = LINALG[name]
    tx = [x.clone().requires_grad_() for x in xs]
    tout = op(*tx, **kw)
    diff = [i for i, o in enumerate(tout) if o.requires_grad]
    rng = np.random.default_rng(0)
    cots = {i: rng.standard_normal(tout[i].shape).astype(np.float32) for i in diff}
    want = torch.autograd.grad(
        [tout[i] for i in diff], tx, [torch.from_numpy(cots[i]) for i in diff]
    )
    lowering = LOWERINGS[str(op)]
    jx = [jnp.asarray(x.numpy()) for x in xs]
    jout = lowering(*jx, **kw)
    assert len(jout) == len(tout)
    for k, (a, b) in enumerate(zip(jout, tout, strict=True)):
        if b.is_floating_point():
            assert_close(a, b, what=f"output {k}", atol=1e-5)
        else:
            np.testing.assert_array_equal(np.asarray(a), b.numpy(), err_msg=f"output {k}")

    def loss(*args):
        out = lowering(*args, **kw)
        return sum((out[i] * cots[i]).sum() for i in diff)

    got = jax.grad(loss, argnums=tuple(range(len(jx))))(*jx)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, what=f"gradient {k}", atol=1e-5)


@pytest.mark.parametrize(
    "fn",
    [torch.linalg.inv, torch.linalg.cholesky, lambda a: torch.linalg.solve(a, a[..., :2])],
    ids=["inv", "cholesky", "solve"],
)
def test_linalg_graph_lowered(fn):
    """Every op of the decomposed graph (with_effects, the error check, the *_ex op) has a
    lowering; the effect token input is an empty constant of the conversion."""
    from jaxattr.bridge import convert
    from jaxattr.bridge.lowerings import LOWERINGS

    model = type("M", (nn.Module,), {"forward": lambda self, x: fn(x)})()
    ep = convert._decompose(torch.export.export(model, (_SPD,)))
    keys = {convert._op_key(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "torch.ops.higher_order.with_effects" in keys
    assert keys <= set(LOWERINGS), keys - set(LOWERINGS)


def test_linalg_converts():
    check_fn(lambda a, b: torch.linalg.solve(a, b) + torch.linalg.inv(a) @ b, _A, _r(2, 4, 3))


def test_torch_result_type_is_torchs():
    """The lowerings promote mixed operands explicitly, by torch's rules (the suite runs with
    ``jax_numpy_dtype_promotion="strict"``): dimensioned tensors before zero-dim tensors
    before Python numbers, a later group counting only where it is of a higher category.
    Checked against ``torch.result_type`` for every pair of operands (int64 is int32 and
    float64 float32 in JAX without x64)."""
    import itertools

    import jax.numpy as jnp
    from jaxattr.bridge.lowerings import torch_result_type

    names = ["bool", "uint8", "int8", "int16", "int32", "int64"]
    names += ["float16", "bfloat16", "float32", "float64"]

    def jax_dtype(name):
        return jnp.dtype({"int64": "int32", "float64": "float32"}.get(name, name))

    operands = [(True, True), (2, 2), (2.5, 2.5)]  # (torch, jax)
    for name in names:
        t = getattr(torch, name)
        operands.append((torch.zeros(2, dtype=t), jnp.zeros(2, jax_dtype(name))))
        operands.append((torch.zeros((), dtype=t), jnp.zeros((), jax_dtype(name))))
    for (ta, ja), (tb, jb) in itertools.product(operands, repeat=2):
        if not isinstance(ta, torch.Tensor) and not isinstance(tb, torch.Tensor):
            continue
        want = str(torch.result_type(ta, tb)).replace("torch.", "")
        assert torch_result_type(ja, jb) == jax_dtype(want), (ta, tb)
