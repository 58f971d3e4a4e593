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
    "conv1d_dilated": (Fn(lambda m, x: m.c(x), c=nn.Conv1d(3, 4, 3, dilation=2, padding=2)),
                       torch.randn(3, 3, 10)),
    "conv3d_stride": (Fn(lambda m, x: m.c(x), c=nn.Conv3d(2, 4, 3, stride=2, padding=1)),
                      torch.randn(3, 2, 5, 6, 6)),
    "conv2d_grouped_same": (Fn(lambda m, x: m.c(x), c=nn.Conv2d(4, 6, 3, groups=2,
                                                                 padding="same")), img(4)),
    "conv_transpose2d_groups": (Fn(lambda m, x: m.c(x), c=nn.ConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)), img(4, 5, 5)),
    "conv_transpose1d": (Fn(lambda m, x: m.c(x), c=nn.ConvTranspose1d(3, 2, 4, stride=3)),
                         torch.randn(3, 3, 6)),
    "rnn_relu_bidirectional": (Fn(lambda m, x: m.rnn(x)[0] * m.rnn(x)[1].mean((0, 2))[:, None,
                                                                                   None],
                                  rnn=nn.RNN(3, 4, num_layers=2, nonlinearity="relu",
                                             bidirectional=True, batch_first=True)),
                               torch.randn(3, 5, 3)),
    "pools": (Fn(lambda m, x: torch.cat([
        F.max_pool2d(x, 3, 2, 1, ceil_mode=True).flatten(1),
        F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False).flatten(1),
        F.avg_pool2d(x, 2).flatten(1),
        F.avg_pool2d(x, 3, 2, 1).flatten(1),
        F.adaptive_avg_pool2d(x, (3, 5)).flatten(1),
        F.adaptive_max_pool2d(x, 3).flatten(1),
        F.max_pool1d(x.flatten(2), 4).flatten(1)], 1)), img(3, 9, 9)),
    "norms": (Fn(lambda m, x: m.ln(m.gn(x)) + m.inorm(x) + m.bn(x), gn=nn.GroupNorm(2, 4),
                 inorm=nn.InstanceNorm2d(4, affine=True), ln=nn.LayerNorm([4, 8, 8]),
                 bn=nn.BatchNorm2d(4)), img(4)),
    "upsample": (Fn(lambda m, x: torch.cat([
        F.interpolate(x, scale_factor=2, mode="nearest"),
        F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False),
        F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=True)], 1)), img()),
    "upsample_odd": (Fn(lambda m, x: F.interpolate(x, size=(11, 7), mode="bilinear")
                        + F.interpolate(x, size=(11, 7), mode="nearest")), img(2, 5, 4)),
    "pads": (Fn(lambda m, x: F.pad(x, (1, 2, 0, 1)).sum((2, 3), keepdim=True)
                + F.pad(x, (2, 2, 1, 1), "reflect").mean(1, keepdim=True)
                + F.pad(x, (2, 2, 1, 1), "replicate") * 0.5
                + F.pad(x, (2, 2, 1, 1), value=0.3)), img(2, 6, 6)),
    "activations": (Fn(lambda m, x: torch.cat([
        F.leaky_relu(x, 0.2), F.elu(x), F.selu(x), F.celu(x, 0.7), F.gelu(x),
        F.gelu(x, approximate="tanh"), F.silu(x), torch.sigmoid(x), torch.tanh(x),
        F.softplus(x, beta=2.0), F.hardswish(x), F.hardsigmoid(x), F.hardtanh(x, -0.5, 0.7),
        F.relu6(x * 4), F.mish(x), F.logsigmoid(x), m.prelu(x), F.relu(x),
        F.softmax(x, -1), F.log_softmax(x, 1)], 1), prelu=nn.PReLU(3, 0.2)), img(3, 4, 4)),
    "mha_masks": (Fn(lambda m, x: m.mha(x, x, x, attn_mask=torch.triu(
        torch.ones(5, 5, dtype=torch.bool), 1), need_weights=False)[0]
        + m.mha(x, x, x, key_padding_mask=torch.arange(5)[None].expand(x.shape[0], 5) > 3)[0],
        mha=nn.MultiheadAttention(8, 2, batch_first=True)), torch.randn(3, 5, 8)),
    "sdpa": (Fn(lambda m, x: F.scaled_dot_product_attention(x, x * 0.5, x, is_causal=True)
                + F.scaled_dot_product_attention(x, x, x, attn_mask=SDPA_MASK)),
             torch.randn(3, 2, 6, 4)),
    "elementwise_reductions": (Fn(lambda m, x: torch.stack([
        (x.exp().log1p() - x.abs().sqrt() * x.sign()).sum((1, 2)),
        x.amax(1).mean(1) + x.amin(2).sum(1), x.var(1).mean(1) + x.std(2, unbiased=False).mean(1),
        x.cumsum(2).pow(2).mean((1, 2)), torch.where(x > 0.3, x, x * x).sum((1, 2)),
        torch.clamp(x, -0.5, 0.5).prod(2).sum(1), x.norm(dim=2).sum(1),
        torch.logsumexp(x, 2).sum(1), (x / (x.abs() + 1)).rsqrt().nan_to_num().sum((1, 2)),
        torch.maximum(x, x.flip(2)).sum((1, 2)) + x.max(1).values.sum(1)
        + torch.minimum(x, x.roll(1, 2)).sum((1, 2))], 1)), torch.randn(3, 4, 6)),
    "indexing_shapes": (Fn(lambda m, x: torch.cat([
        x[:, 1:3].reshape(x.shape[0], -1), x.transpose(1, 2)[:, :, ::2].flatten(1),
        x.permute(0, 2, 1).contiguous().view(x.shape[0], -1)[:, :5],
        torch.stack(x.split(2, 1), 1).sum(1).flatten(1), x.chunk(3, 2)[1].flatten(1),
        x[:, [0, 2]].flatten(1),
        x.gather(2, torch.ones_like(x[:, :, :2], dtype=torch.long)).flatten(1),
        x.unsqueeze(1).expand(-1, 2, -1, -1).flatten(1), x[:, -1], x.select(2, 0),
        torch.index_select(x, 2, torch.tensor([5, 0])).flatten(1),
        x.repeat(1, 1, 2).flatten(1), torch.tril(x[:, :, :4]).flatten(1),
        x.masked_fill(x > 0.5, -1.0).flatten(1)], 1)), torch.randn(3, 4, 6)),
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
    check_model(model, (x,), name=name, atol=2e-5, param_grads=any(
        True for _ in model.parameters()))
