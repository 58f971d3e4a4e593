"""Helpers shared by the test modules: comparing against a reference and replaying a
reference's random draws. Test modules import these from here, not from each other.

- :func:`assert_close`: element by element, relative to the reference with an absolute
  floor on the reference's scale (``atol = rtol * max|ref|`` unless given).
- :func:`assert_close_scaled`: the largest error bounded on the reference's scale,
  ``max|ours - ref| <= rtol * max|ref| + atol``.
- :func:`assert_parity`: a torch-side result (tensor, tuple or list of tensors) against a
  reference's, ``max|d| / max|ref| <= rtol``, the worst error per name kept in ``PARITY``.
- :class:`Replay`, :func:`samples_interleaved`: feed jaxattr's draws to a reference's
  random calls, in the reference's order and layout.
"""

from __future__ import annotations

import jax
import numpy as np


def to_numpy(a) -> np.ndarray:
    """A JAX/NumPy array, torch tensor or scalar as a NumPy array (bfloat16 as float32)."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":  # ml_dtypes: not NumPy arithmetic
        a = a.astype(np.float32)
    return a


def linear(x, weight, bias):
    """``x @ weight.T + bias`` (torch's ``nn.Linear``), the bias given x's leading axes
    explicitly: the suite runs with ``jax_numpy_rank_promotion="raise"``."""
    y = x @ weight.T
    return y + bias.reshape((1,) * (y.ndim - 1) + tuple(bias.shape))


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def assert_close(ours, ref, rtol: float = 1e-4, atol: float | None = None) -> None:
    """``ours`` equals the reference ``ref`` leaf by leaf (arrays, torch tensors, or tuples,
    lists and dicts of them): the same number of leaves, each of the same shape, with
    ``|ours - ref| <= atol + rtol * |ref|`` element by element; ``atol`` defaults to
    ``rtol * max|ref|`` per leaf (the reference's scale; 1e-12 for an all-zero one)."""
    ours_l, ref_l = _leaves(ours), _leaves(ref)
    assert len(ours_l) == len(ref_l), (len(ours_l), len(ref_l))
    for o, r in zip(ours_l, ref_l, strict=True):
        o, r = to_numpy(o), to_numpy(r)
        assert o.shape == r.shape, (o.shape, r.shape)
        floor = rtol * max(float(np.abs(r).max(initial=0.0)), 1e-12) if atol is None else atol
        np.testing.assert_allclose(o, r, rtol=rtol, atol=floor)


def assert_close_scaled(ours, ref, rtol: float, atol: float = 0.0) -> None:
    """The largest error of each leaf on the reference's scale:
    ``max|ours - ref| <= rtol * max|ref| + atol`` (no per-element relative term)."""
    ours_l, ref_l = _leaves(ours), _leaves(ref)
    assert len(ours_l) == len(ref_l), (len(ours_l), len(ref_l))
    for o, r in zip(ours_l, ref_l, strict=True):
        o, r = to_numpy(o).astype(np.float64), to_numpy(r).astype(np.float64)
        assert o.shape == r.shape, (o.shape, r.shape)
        err = float(np.abs(o - r).max(initial=0.0))
        bound = rtol * float(np.abs(r).max(initial=0.0)) + atol
        assert err <= bound, f"max |ours - ref| = {err:.3g} > {bound:.3g}"


#: The worst relative error seen per name by :func:`assert_parity` (printed with -s).
PARITY: dict[str, float] = {}


def assert_parity(name: str, ours, ref, rtol: float = 1e-4) -> None:
    """Same structure (tensor / tuple / list of tensors) and ``max|d| / max|ref| <= rtol``;
    an all-zero reference fails (a vacuous comparison)."""
    import torch

    if isinstance(ref, (tuple, list)):
        assert type(ours) is type(ref) and len(ours) == len(ref), (type(ours), type(ref))
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            assert_parity(f"{name}[{i}]", a, b, rtol)
        return
    assert isinstance(ours, torch.Tensor), type(ours)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    a, b = ours.detach().double().numpy(), ref.detach().double().numpy()
    scale = float(np.abs(b).max())
    assert scale > 0, f"{name}: the reference is all zeros, a vacuous comparison"
    err = float(np.abs(a - b).max()) / scale
    PARITY[name] = max(err, PARITY.get(name, 0.0))
    print(f"parity {name}: {err:.2e}")
    assert err <= rtol, f"{name}: max|ours - ref| / max|ref| = {err:.3e} > {rtol}"


class Replay:
    """Returns prepared values, one per call, in order (replacing a random generator)."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, *args, **kwargs):
        return self.values.pop(0)


def samples_interleaved(noise_leaf):
    """jaxattr's (S, N, ...) sample layout to Captum's (N * S, ...) repeat_interleave, as a
    torch tensor."""
    import torch

    a = np.asarray(noise_leaf)
    return torch.from_numpy(np.ascontiguousarray(np.swapaxes(a, 0, 1)).reshape(-1, *a.shape[2:]))


def normal(shape: tuple, seed: int = 0) -> np.ndarray:
    """A float32 array of standard-normal draws from numpy's generator ``seed``."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)
