"""Small torch reference models and hand-written JAX twins with the same weights.

The foundation's parity tests need the same model in torch (for Captum/Zennit) and in JAX.
These twins are written by hand so that the gradient methods are tested independently
of the bridge (which has its own tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn


def seed_cnn(seed: int = 0) -> nn.Sequential:
    """The seed documents' CNN: 3x32x32 in, 10 classes out."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 32 * 32, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    ).eval()


def _np(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().cpu().numpy())


def _dense(h, w, b):
    """``h @ w + b``, the bias given h's leading axes explicitly (the suite runs with
    ``jax_numpy_rank_promotion="raise"``)."""
    y = h @ w
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def _conv(x, w, b):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + b[None, :, None, None]


def seed_cnn_jax(model: nn.Sequential):
    """A pure JAX function computing ``model`` (the seed CNN) on NCHW float32 input."""
    p = {k: _np(v) for k, v in model.state_dict().items()}
    # The weights are constants of every program compiled from ``fn``: transposed here once,
    # not by XLA's constant folding in each compile (seconds for the 16384x1024 matrix).
    w5, w7 = (
        jnp.asarray(np.ascontiguousarray(np.asarray(p[k]).T)) for k in ("5.weight", "7.weight")
    )

    def fn(x):
        h = jax.nn.relu(_conv(x, p["0.weight"], p["0.bias"]))
        h = jax.nn.relu(_conv(h, p["2.weight"], p["2.bias"]))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(_dense(h, w5, p["5.bias"]))
        return _dense(h, w7, p["7.bias"])

    return fn


class TwoInput(nn.Module):
    """f(x1, x2) = W2 tanh(W1 [x1, x2]) with x1 (N, 4), x2 (N, 3): two inputs, 5 outputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = nn.Linear(7, 16)
        self.l2 = nn.Linear(16, 5)

    def forward(self, x1, x2):
        return self.l2(torch.tanh(self.l1(torch.cat([x1, x2], dim=1))))


def two_input_jax(model: TwoInput):
    p = {k: _np(v) for k, v in model.state_dict().items()}

    def fn(x1, x2):
        h = jnp.tanh(_dense(jnp.concatenate([x1, x2], axis=1), p["l1.weight"].T, p["l1.bias"]))
        return _dense(h, p["l2.weight"].T, p["l2.bias"])

    return fn


class CubeOut(nn.Module):
    """x (N, 6) -> an (N, 3, 4) output, for tuple targets."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = nn.Linear(6, 12)

    def forward(self, x):
        return torch.sigmoid(self.l1(x)).reshape(-1, 3, 4) * 2.0


def cube_out_jax(model: CubeOut):
    p = {k: _np(v) for k, v in model.state_dict().items()}

    def fn(x):
        return jax.nn.sigmoid(_dense(x, p["l1.weight"].T, p["l1.bias"])).reshape(-1, 3, 4) * 2.0

    return fn


def to_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def to_np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)
