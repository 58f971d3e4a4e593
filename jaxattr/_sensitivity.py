"""Black-box global sensitivity analysis: Sobol and HSIC attributions (Xplique's methods).

Reimplements, for batch-first JAX models, the two global-sensitivity attribution methods
of Xplique (TensorFlow-only):

- :func:`sobol_attribution` (Fel et al., 2021, "Look at the Variance!"): total-order Sobol
  indices of a grid of mask cells, estimated on a quasi-Monte-Carlo replicated design
  (:func:`sobol_design`) with the Jansen, Saltelli, Homma, Janon or Glen estimator
  (:func:`sobol_total_indices`).
- :func:`hsic_attribution` (Novello et al., 2022, "Making Sense of Dependence"): the
  Hilbert-Schmidt independence criterion between each mask cell and the output
  (:func:`hsic_indices`), with a binary, RBF or Sobolev input kernel.

The quasi-Monte-Carlo points come from :func:`sobol_sequence`, a Sobol sequence
implemented here (Gray-code order, 24-bit digits), optionally scrambled with a random
linear matrix scramble plus digital shift drawn from an explicit ``key``. Every mask's
forward pass runs in one ``vmap``-ped batch per chunk.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core

__all__ = [
    "HSIC_KERNELS",
    "PERTURBATIONS",
    "SOBOL_ESTIMATORS",
    "hsic_attribution",
    "hsic_indices",
    "sobol_attribution",
    "sobol_design",
    "sobol_sequence",
    "sobol_total_indices",
]

#: Total-order Sobol estimators (Xplique's ``JansenEstimator`` ... ``GlenEstimator``).
SOBOL_ESTIMATORS = ("jansen", "saltelli", "homma", "janon", "glen")
#: Input kernels of the HSIC estimator (Xplique's Binary, Rbf and Sobolev estimators).
HSIC_KERNELS = ("binary", "rbf", "sobolev")
#: Xplique's perturbation functions.
PERTURBATIONS = ("inpainting", "blurring", "amplitude")

_BITS = 24  # digits: exact in float32
_EPS = 1e-12


# --------------------------------------------------------------------------------------
# Sobol sequence
# --------------------------------------------------------------------------------------

#: Joe and Kuo's (2008) first primitive polynomials and initial direction numbers
#: ``(degree s, interior coefficients a, m_1..m_s)`` for dimensions 2-13; with them the
#: unscrambled sequence equals SciPy's ``qmc.Sobol(scramble=False)`` on those dimensions.
_JOE_KUO = (
    (1, 0, (1,)),
    (2, 1, (1, 3)),
    (3, 1, (1, 3, 1)),
    (3, 2, (1, 1, 1)),
    (4, 1, (1, 1, 3, 3)),
    (4, 4, (1, 3, 5, 13)),
    (5, 2, (1, 1, 5, 5, 17)),
    (5, 4, (1, 1, 5, 5, 5)),
    (5, 7, (1, 1, 7, 11, 19)),
    (5, 11, (1, 1, 5, 1, 1)),
    (5, 13, (1, 1, 1, 3, 11)),
    (5, 14, (1, 3, 5, 5, 31)),
)


def _polymulmod(a: int, b: int, p: int, s: int) -> int:
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a >> s & 1:
            a ^= p
    return out


def _polypowmod(e: int, p: int, s: int) -> int:
    """``x^e mod p`` over GF(2), ``p`` of degree ``s`` as a bit mask."""
    result, base = 1, 2
    while e:
        if e & 1:
            result = _polymulmod(result, base, p, s)
        base = _polymulmod(base, base, p, s)
        e >>= 1
    return result


def _prime_factors(n: int) -> list[int]:
    out, f = [], 2
    while f * f <= n:
        if n % f == 0:
            out.append(f)
            while n % f == 0:
                n //= f
        f += 1
    if n > 1:
        out.append(n)
    return out


def _primitive_polynomials(count: int):
    """The first ``count`` primitive polynomials over GF(2) of degree >= 1, by degree and
    then interior coefficients (Joe and Kuo's order): yields ``(s, a)``."""
    found, s = 0, 1
    while found < count:
        order = 2**s - 1
        factors = _prime_factors(order)
        for a in range(2 ** (s - 1)):
            p = (1 << s) | (a << 1) | 1
            if s == 1:
                ok = True
            else:
                ok = _polypowmod(order, p, s) == 1 and all(
                    _polypowmod(order // q, p, s) != 1 for q in factors
                )
            if ok:
                yield s, a
                found += 1
                if found == count:
                    return
        s += 1


@functools.lru_cache(maxsize=8)
def _direction_bits(dimension: int) -> np.ndarray:
    """Direction numbers as digit matrices: (dimension, 24 numbers, 24 digits) uint8, digit
    0 the most significant. Dimension 1 is van der Corput's; 2-13 use Joe and Kuo's initial
    numbers; later ones odd initial numbers drawn once from a fixed seed."""
    rng = np.random.default_rng(20211108)
    rows = [[1 << (_BITS - 1 - k) for k in range(_BITS)]]
    for j, (s, a) in enumerate(_primitive_polynomials(max(dimension - 1, 0))):
        if j < len(_JOE_KUO):
            m = list(_JOE_KUO[j][2])
        else:
            m = [
                2 * int(rng.integers(0, 2 ** (k - 1))) + 1 if k > 1 else 1 for k in range(1, s + 1)
            ]
        for k in range(s, _BITS):
            new = m[k - s] ^ (m[k - s] << s)
            for i in range(1, s):
                if (a >> (s - 1 - i)) & 1:
                    new ^= m[k - i] << i
            m.append(new)
        rows.append([m[k] << (_BITS - 1 - k) for k in range(_BITS)])
    v = np.asarray(rows[:dimension], dtype=np.int64)  # (d, 30)
    shifts = _BITS - 1 - np.arange(_BITS)
    return ((v[:, :, None] >> shifts[None, None, :]) & 1).astype(np.uint8)


def sobol_sequence(n: int, dimension: int, *, key: jax.Array | None = None) -> jax.Array:
    """The first ``n`` points of a ``dimension``-dimensional Sobol sequence in [0, 1).

    Points in Gray-code order with 24-bit digits (exact in float32); unscrambled, point 0
    is the origin and the first 13 dimensions equal SciPy's ``qmc.Sobol(scramble=False)``
    (Joe and Kuo's direction numbers; further dimensions use primitive polynomials in Joe
    and Kuo's order with seeded initial numbers). With a ``key`` the sequence is scrambled
    (random linear matrix scramble of the digits plus a digital shift, per dimension),
    which keeps its stratification and makes estimates unbiased. Jittable (``n`` and
    ``dimension`` static).

    Args:
        n: Number of points (>= 1).
        dimension: Number of coordinates (>= 1).
        key: PRNG key for scrambling; ``None`` for the plain sequence.

    Returns:
        A float32 array of shape (n, dimension).

    Example:
        >>> import jaxattr
        >>> jaxattr.sobol_sequence(4, 2)
        Array([[0.  , 0.  ],
               [0.5 , 0.5 ],
               [0.75, 0.25],
               [0.25, 0.75]], dtype=float32)
    """
    n = _core.check_positive_int(n, "n")
    dimension = _core.check_positive_int(dimension, "dimension")
    if n > 2**_BITS:
        raise ValueError(f"n must be <= 2**{_BITS}, got {n}")
    if key is not None:
        key = _core.check_key(key, "sobol_sequence")
    return _sobol_points(key, n=n, dimension=dimension)


@functools.partial(_caching.jit, static_argnames=("n", "dimension"))
def _sobol_points(key, *, n, dimension):
    hi = jax.lax.Precision.HIGHEST
    v = jnp.asarray(_direction_bits(dimension), jnp.float32)  # (d, k, b) digits
    if key is not None:
        k1, k2 = jax.random.split(key)
        lower = jax.random.bernoulli(k1, 0.5, (dimension, _BITS, _BITS)).astype(jnp.float32)
        lower = jnp.tril(lower, -1) + jnp.eye(_BITS, dtype=jnp.float32)[None]
        # digit b of a scrambled number: sum over digits c <= b of L[b, c] * digit c, mod 2
        v = jnp.mod(jnp.einsum("dbc,dkc->dkb", lower, v, precision=hi), 2.0)
        shift = jax.random.bernoulli(k2, 0.5, (dimension, _BITS)).astype(jnp.float32)
    else:
        shift = jnp.zeros((dimension, _BITS), jnp.float32)
    i = np.arange(n, dtype=np.int64)
    gray = i ^ (i >> 1)
    g = jnp.asarray((gray[:, None] >> np.arange(_BITS)[None, :]) & 1, jnp.float32)  # (n, k)
    digits = jnp.mod(jnp.einsum("nk,dkb->ndb", g, v, precision=hi) + shift[None], 2.0)
    weights = jnp.asarray(2.0 ** -(np.arange(_BITS) + 1.0), jnp.float32)
    return jnp.einsum("ndb,b->nd", digits, weights, precision=hi)


def sobol_design(nb_design: int, dimension: int, *, key: jax.Array | None = None) -> jax.Array:
    """Xplique's replicated design for total Sobol indices: matrices A, B and C stacked.

    ``A`` and ``B`` are the two halves of ``nb_design`` points of a ``2 * dimension``
    dimensional :func:`sobol_sequence`; ``C_i`` is ``A`` with its column ``i`` taken from
    ``B``. Rows: ``A`` (nb_design), ``B`` (nb_design), then ``C_0, ..., C_{d-1}`` (each
    nb_design), so ``nb_design * (dimension + 2)`` points in all.

    Args:
        nb_design: Points per matrix (>= 2; a power of two keeps the QMC balance).
        dimension: Number of variables (>= 1).
        key: PRNG key for scrambling; ``None`` for the plain sequence (Xplique's default).

    Returns:
        Float32 array of shape (nb_design * (dimension + 2), dimension).

    Example:
        >>> import jaxattr
        >>> jaxattr.sobol_design(2, 2)
        Array([[0. , 0. ],
               [0.5, 0.5],
               [0. , 0. ],
               [0.5, 0.5],
               [0. , 0. ],
               [0.5, 0.5],
               [0. , 0. ],
               [0.5, 0.5]], dtype=float32)
    """
    nb_design = _core.check_positive_int(nb_design, "nb_design", 2)
    dimension = _core.check_positive_int(dimension, "dimension")
    if key is not None:
        key = _core.check_key(key, "sobol_design")
    return _design(key, nb_design=nb_design, dimension=dimension)


@functools.partial(_caching.jit, static_argnames=("nb_design", "dimension"))
def _design(key, *, nb_design, dimension):
    ab = _sobol_points(key, n=nb_design, dimension=2 * dimension)
    a, b = ab[:, :dimension], ab[:, dimension:]
    eye = jnp.eye(dimension, dtype=a.dtype)[:, None, :]  # (d, 1, d)
    c = a[None] * (1 - eye) + b[None] * eye  # (d, nb_design, d)
    return jnp.concatenate([a, b, c.reshape(-1, dimension)], axis=0)


def sobol_total_indices(outputs: Any, nb_design: int, estimator: str = "jansen") -> jax.Array:
    """Total-order Sobol indices from the outputs on a :func:`sobol_design`.

    With ``a`` the outputs on A and ``c_i`` those on C_i (``n = nb_design``), ``V`` the
    sample variance of ``a`` (ddof 1, floored at 1e-12), as Xplique:

    - ``jansen``: ``sum_j (a_j - c_ij)^2 / (2 n V)``
    - ``saltelli`` and ``homma``: ``1 - (mean(a c_i) - mean(a)^2) / V``
    - ``janon``: ``1 - (mean(a c_i) - m_i^2) / V_i`` with ``m_i`` the mean of ``a`` and
      ``c_i`` together and ``V_i`` their pooled second moment minus ``m_i^2``
    - ``glen``: ``1 - corr(a, c_i)``

    Args:
        outputs: The model outputs on the design rows, shape (nb_design * (d + 2), ...):
            trailing axes (e.g. examples) are estimated independently.
        nb_design: Points per matrix of the design.
        estimator: One of :data:`SOBOL_ESTIMATORS`.

    Returns:
        The indices, float32 of shape (d, ...).

    Raises:
        ValueError: Unknown estimator, or ``len(outputs)`` is not ``nb_design * (d + 2)``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> design = jaxattr.sobol_design(256, 2)
        >>> y = design[:, 0] + 0.0 * design[:, 1]          # only the first variable matters
        >>> jaxattr.sobol_total_indices(y, 256).round(2)
        Array([1., 0.], dtype=float32)
    """
    _core.check_choice(estimator, "estimator", SOBOL_ESTIMATORS)
    nb_design = _core.check_positive_int(nb_design, "nb_design", 2)
    y = jnp.asarray(outputs, jnp.float32)
    if y.ndim == 0 or y.shape[0] % nb_design or y.shape[0] // nb_design < 3:
        rows = y.shape[0] if y.ndim else 0
        raise ValueError(
            f"outputs must hold nb_design * (d + 2) rows with d >= 1; got {rows} rows for "
            f"nb_design={nb_design}"
        )
    return _total_indices(y, nb_design=nb_design, estimator=estimator)


@functools.partial(_caching.jit, static_argnames=("nb_design", "estimator"))
def _total_indices(y, *, nb_design, estimator):
    d = y.shape[0] // nb_design - 2
    a = y[:nb_design]
    c = y[2 * nb_design :].reshape(d, nb_design, *y.shape[1:])
    n = float(nb_design)

    def var(v, axis):
        return jnp.sum((v - jnp.mean(v, axis=axis, keepdims=True)) ** 2, axis=axis) / max(
            n - 1.0, 1.0
        )

    var_a = jnp.maximum(var(a, 0), _EPS)
    if estimator == "jansen":
        return jnp.sum((a[None] - c) ** 2, axis=1) / (2.0 * n * var_a[None])
    e_ac = jnp.mean(c * a[None], axis=1)
    mu_a = jnp.mean(a, axis=0)
    if estimator in ("saltelli", "homma"):
        return 1.0 - (e_ac - mu_a[None] ** 2) / var_a[None]
    mu_c = jnp.mean(c, axis=1)
    if estimator == "janon":
        mu_ac = 0.5 * (mu_a[None] + mu_c)
        pooled = (jnp.sum(a**2, axis=0)[None] + jnp.sum(c**2, axis=1)) / (2.0 * max(n - 1.0, 1.0))
        v = jnp.maximum(pooled - mu_ac**2, _EPS)
        return 1.0 - (e_ac - mu_ac**2) / v
    cov = jnp.sum((a - mu_a[None])[None] * (c - mu_c[:, None]), axis=1) / max(n - 1.0, 1.0)
    var_c = jnp.maximum(var(c, 1), _EPS)
    return 1.0 - cov / jnp.sqrt(var_a[None] * var_c)


# --------------------------------------------------------------------------------------
# HSIC
# --------------------------------------------------------------------------------------


def _input_kernel(kernel: str, u: jax.Array, v: jax.Array) -> jax.Array:
    if kernel == "binary":
        return 0.5 - (u - v) ** 2
    if kernel == "rbf":
        return jnp.exp(-((u - v) ** 2) / (2 * 0.5**2))
    dist = jnp.abs(u - v)
    return (dist**2 - dist + 1.0 / 6.0) / 2 + (jnp.abs(u) - 0.5) * (jnp.abs(v) - 0.5)


def hsic_indices(
    design: Any, outputs: Any, kernel: str = "binary", *, batch_size: int | None = None
) -> jax.Array:
    """HSIC between each design variable and the output (Xplique's HSIC estimators).

    For variable ``i``: ``K_i = 1 + k(x_i, x_i')`` with ``k`` the input kernel (``binary``:
    ``0.5 - (u - v)^2``, for {0, 1} designs; ``rbf``: width 0.5; ``sobolev``: the degree-2
    Sobolev kernel), ``L`` the output Gram matrix of an RBF kernel whose width is the
    median of the outputs (Xplique's choice; 1 where that median is 0), ``H`` the centering
    matrix; the score is ``tr(K_i H L H) / n``, which is ``(n - 1)^2 / n`` times Gretton's
    biased estimator ``tr(K H L H) / (n - 1)^2`` used in Novello et al. (2022).

    Args:
        design: The input samples, shape (n, d).
        outputs: The outputs, shape (n,) or (n, ...) (trailing axes independent).
        kernel: One of :data:`HSIC_KERNELS`.
        batch_size: Variables per step of the (n, n) kernel evaluations (``None``: all).

    Returns:
        Float32 scores of shape (d, ...).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> x = jnp.array([[0., 0.], [0., 1.], [1., 0.], [1., 1.]] * 4)
        >>> jaxattr.hsic_indices(x, x[:, 0]).round(4)       # exactly (n / 4) (1 - e^-2)
        Array([3.4587, 0.    ], dtype=float32)
    """
    _core.check_choice(kernel, "kernel", HSIC_KERNELS)
    x = jnp.asarray(design, jnp.float32)
    y = jnp.asarray(outputs, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"design must have shape (n, d), got {tuple(x.shape)}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"outputs must lead with the design's n={x.shape[0]} samples, got shape "
            f"{tuple(y.shape)}"
        )
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    return _hsic(x, y, kernel=kernel, batch_size=batch_size or x.shape[1])


@functools.partial(_caching.jit, static_argnames=("kernel", "batch_size"))
def _hsic(x, y, *, kernel, batch_size):
    n, d = x.shape
    rest = y.shape[1:]
    y2 = y.reshape(n, -1)  # (n, r)
    width = jnp.percentile(y2, 50.0, axis=0, method="linear")
    width = jnp.where(width == 0, 1.0, width)
    gram = jnp.exp(-((y2[:, None] - y2[None]) ** 2) / (2 * width**2)[None, None])  # (n, n, r)
    centred = gram - gram.mean(0, keepdims=True)
    centred = centred - centred.mean(1, keepdims=True)  # H L H

    def score(col):
        k = 1.0 + _input_kernel(kernel, col[:, None], col[None, :])
        return jnp.einsum("jl,jlr->r", k, centred) / n

    out = jax.lax.map(score, x.T, batch_size=batch_size)
    return out.reshape(d, *rest)


# --------------------------------------------------------------------------------------
# Attribution on images
# --------------------------------------------------------------------------------------


def _box_blur(img: jax.Array, axes: tuple[int, int], size: int) -> jax.Array:
    """OpenCV's ``blur(x, (size, size))``: box mean, anchor at ``size // 2``, borders
    reflected without repeating the edge (``BORDER_REFLECT_101``)."""
    for a in axes:
        lo, hi = size // 2, size - 1 - size // 2
        pad = [(0, 0)] * img.ndim
        pad[a] = (lo, hi)
        p = jnp.pad(img, pad, mode="reflect")
        n = img.shape[a]
        img = sum(jax.lax.slice_in_dim(p, k, k + n, axis=a) for k in range(size)) / size
    return img


def _perturb(kind, sigma, x, masks, spatial_axes):
    """Xplique's perturbations of one batch ``x`` by one upsampled mask (x's rank)."""
    if callable(kind):
        return kind(x, masks)
    if kind == "inpainting":
        return x * masks
    if kind == "blurring":
        blurred = _box_blur(x, spatial_axes, int(sigma))
        return x * masks + (1.0 - masks) * blurred
    return x * (masks - 0.5) * sigma


@_core.cached_jit(("fn", "inputs", "perturbation", "sigma", "layout"))
def _gsa_scores(*, fn, inputs, x, args, target, masks, perturbation, sigma, layout):
    """Target scores of ``fn`` on x perturbed by each of ``masks`` (m, g, g, c): (m, N)."""
    ch, hw = layout
    spatial = tuple(a for a in range(1, x.ndim) if a != ch)
    up = _upsample_nearest(masks, hw)  # (m, H, W, c)
    up = jnp.moveaxis(up, -1, ch) if ch is not None else up[..., 0]

    def one(mask):
        xp = _perturb(perturbation, sigma, x, mask[None].astype(x.dtype), spatial)
        return _core.target_score(inputs.call(fn, xp, args), target).astype(jnp.float32)

    return jax.vmap(one)(up)


def _upsample_nearest(masks: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """TensorFlow's ``resize(method="nearest")`` (half-pixel centres): (m, g, g, c) to
    (m, H, W, c)."""
    g0, g1 = masks.shape[1:3]
    ys = np.minimum(np.floor((np.arange(hw[0]) + 0.5) * g0 / hw[0]).astype(int), g0 - 1)
    xs = np.minimum(np.floor((np.arange(hw[1]) + 0.5) * g1 / hw[1]).astype(int), g1 - 1)
    return masks[:, ys][:, :, xs]


def _layout(x: jax.Array, channel_axis: int | None) -> tuple[int | None, tuple[int, int], int]:
    """(channel axis, (H, W), channels) of a batch of images."""
    if channel_axis is None:
        if x.ndim != 3:
            raise ValueError(
                f"x must have shape (N, H, W) with channel_axis=None, got {tuple(x.shape)}"
            )
        return None, tuple(x.shape[1:]), 1
    if x.ndim != 4:
        raise ValueError(
            f"x must be a batch of images (N, C, H, W) or (N, H, W, C), got shape {tuple(x.shape)}"
        )
    from jaxattr._pair import _channel_axis

    ch = _channel_axis(channel_axis, 4)
    hw = tuple(s for a, s in enumerate(x.shape) if a not in (0, ch))
    return ch, hw, x.shape[ch]


def _gsa(
    name,
    fn,
    x,
    target,
    grid_size,
    nb_channels,
    design,
    perturbation,
    sigma,
    channel_axis,
    batch_size,
    args,
):
    """Evaluate the model on every mask of ``design`` (M, g*g*c): scores (M, N)."""
    grid_size = _core.check_positive_int(grid_size, "grid_size")
    if not callable(perturbation):
        _core.check_choice(perturbation, "perturbation_function", PERTURBATIONS)
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    args = tuple(args)
    inputs = _core.as_inputs(x, need_float=False)
    ch, hw, channels = _layout(x, channel_axis)
    if nb_channels not in (1, channels):
        raise ValueError(
            f"nb_channels must be 1 or the number of channels of x ({channels}), got {nb_channels}"
        )
    t = _core.prepare_target(target, fn, inputs, x, args)
    masks = design.reshape(-1, grid_size, grid_size, nb_channels)
    parts = []
    for start, stop in _core.batched_chunks(len(masks), batch_size, backward=False):
        parts.append(
            _gsa_scores(
                fn=fn,
                inputs=inputs,
                x=x,
                args=args,
                target=t,
                masks=masks[start:stop],
                perturbation=perturbation,
                sigma=sigma,
                layout=(ch, hw),
            )
        )
    return jnp.concatenate(parts, axis=0), (ch, hw)


@functools.partial(_caching.jit, static_argnums=(1, 2, 3, 4))
def _heatmap(scores: jax.Array, grid_size: int, nb_channels: int, layout, dtype) -> jax.Array:
    """Per-cell scores (g*g*c, N) to heatmaps at the input size (bicubic, as Xplique)."""
    ch, hw = layout
    n = scores.shape[-1]
    cells = jnp.moveaxis(scores.reshape(grid_size, grid_size, nb_channels, n), -1, 0)
    heat = jax.image.resize(cells, (n, *hw, nb_channels), method="cubic")
    if nb_channels == 1:
        return heat[..., 0].astype(dtype)
    return jnp.moveaxis(heat, -1, ch).astype(dtype)


def _sigma(perturbation: Any, sigma: float | None) -> float:
    if sigma is not None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)):
            raise TypeError(f"perturbation_sigma must be a number, got {sigma!r}")
        if perturbation == "blurring" and (int(sigma) != sigma or sigma < 1):
            raise ValueError(
                f"perturbation_sigma is the box size of 'blurring' and must be an int >= 1, "
                f"got {sigma}"
            )
        return float(sigma)
    return 10.0 if perturbation == "blurring" else 1.0


@_core.contract
def sobol_attribution(
    fn: Callable[..., Any],
    x: jax.Array,
    *,
    target: Any = None,
    grid_size: int = 8,
    nb_design: int = 32,
    estimator: str = "jansen",
    perturbation_function: str | Callable[..., Any] = "inpainting",
    perturbation_sigma: float | None = None,
    nb_channels: int = 1,
    key: jax.Array | None = None,
    channel_axis: int | None = 1,
    batch_size: int | None = None,
    args: tuple = (),
) -> jax.Array:
    """Sobol attribution (Fel et al., 2021), Xplique's ``SobolAttributionMethod``.

    Cuts the image into a ``grid_size`` x ``grid_size`` grid (per channel with
    ``nb_channels`` = C), draws masks from :func:`sobol_design` (``nb_design * (d + 2)``
    masks for ``d = grid_size^2 * nb_channels`` cells), upsamples them (nearest), perturbs
    the input with each, evaluates the target score and estimates every cell's total
    Sobol index (:func:`sobol_total_indices`); the grid of indices is resized to the image
    (bicubic). The masks' forward passes are one ``vmap``-ped batch per chunk.

    Perturbations (Xplique's): ``inpainting`` ``x * M``; ``blurring``
    ``x * M + (1 - M) * box_blur(x)`` (box of ``perturbation_sigma`` = 10 pixels, OpenCV's
    ``blur``); ``amplitude`` ``x * (M - 0.5) * perturbation_sigma`` (1.0); or a callable
    ``(x, mask) -> perturbed x`` with ``mask`` of shape (1, 1, H, W) (x's layout, one
    channel or ``nb_channels``).

    Args:
        fn: Batch-first model ``fn(x) -> y``.
        x: Images (N, C, H, W) (``channel_axis=1``), (N, H, W, C) (``-1``) or (N, H, W)
            (``None``).
        target: What to explain (see :func:`jaxattr.select_target`).
        grid_size: Cells per side of the mask grid.
        nb_design: Points per design matrix; a power of two (Xplique requires it).
        estimator: One of :data:`SOBOL_ESTIMATORS`.
        perturbation_function: One of :data:`PERTURBATIONS`, or a callable.
        perturbation_sigma: The perturbation's strength (``None``: Xplique's default).
        nb_channels: 1 (cells shared by the channels) or the number of channels.
        key: PRNG key to scramble the Sobol sequence; ``None``: the plain sequence, as
            Xplique (deterministic).
        channel_axis: The channel axis of x, or ``None`` for (N, H, W) images.
        batch_size: At most this many masks per compiled call (``None``: memory budget).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The total indices at the input resolution: (N, H, W) with ``nb_channels=1``, x's
        shape otherwise; x's dtype.

    Raises:
        ValueError: ``nb_design`` not a power of two, unknown estimator or perturbation,
            ``nb_channels`` that does not fit x, or a target that does not fit.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x[:, :, :4, :4].sum((1, 2, 3))[:, None]   # top-left corner only
        >>> x = jnp.ones((1, 1, 8, 8))
        >>> heat = jaxattr.sobol_attribution(fn, x, grid_size=2, nb_design=16)
        >>> heat.shape, bool(heat[0, 0, 0] > 0.9), bool(abs(heat[0, 7, 7]) < 0.05)
        ((1, 8, 8), True, True)
    """
    nb_design = _core.check_positive_int(nb_design, "nb_design", 2)
    if nb_design & (nb_design - 1):
        raise ValueError(f"nb_design must be a power of two, got {nb_design}")
    _core.check_choice(estimator, "estimator", SOBOL_ESTIMATORS)
    grid_size = _core.check_positive_int(grid_size, "grid_size")
    nb_channels = _core.check_positive_int(nb_channels, "nb_channels")
    sigma = _sigma(perturbation_function, perturbation_sigma)
    if key is not None:
        key = _core.check_key(key, "sobol_attribution")
    design = sobol_design(nb_design, grid_size * grid_size * nb_channels, key=key)
    scores, layout = _gsa(
        "sobol_attribution",
        fn,
        x,
        target,
        grid_size,
        nb_channels,
        design,
        perturbation_function,
        sigma,
        channel_axis,
        batch_size,
        args,
    )
    indices = sobol_total_indices(scores, nb_design, estimator)  # (d, N)
    return _heatmap(indices, grid_size, nb_channels, layout, np.dtype(jnp.asarray(x).dtype))


@_core.contract
def hsic_attribution(
    fn: Callable[..., Any],
    x: jax.Array,
    *,
    target: Any = None,
    grid_size: int = 8,
    nb_design: int = 500,
    kernel: str = "binary",
    perturbation_function: str | Callable[..., Any] = "inpainting",
    perturbation_sigma: float | None = None,
    nb_channels: int = 1,
    key: jax.Array | None = None,
    channel_axis: int | None = 1,
    batch_size: int | None = None,
    estimator_batch_size: int | None = None,
    args: tuple = (),
) -> jax.Array:
    """HSIC attribution (Novello et al., 2022), Xplique's ``HsicAttributionMethod``.

    Draws ``nb_design`` masks of ``grid_size^2 * nb_channels`` cells from
    :func:`sobol_sequence` (rounded to {0, 1} for the ``binary`` kernel, Xplique's default
    binary sampler; kept in [0, 1] for ``rbf`` and ``sobolev``), perturbs the input with
    each (see :func:`sobol_attribution` for the perturbations), and scores every cell by
    the HSIC between its mask value and the target score (:func:`hsic_indices`); the grid
    is resized to the image (bicubic).

    Args:
        fn: Batch-first model ``fn(x) -> y``.
        x: Images (N, C, H, W) (``channel_axis=1``), (N, H, W, C) (``-1``) or (N, H, W)
            (``None``).
        target: What to explain (see :func:`jaxattr.select_target`).
        grid_size: Cells per side of the mask grid.
        nb_design: Number of masks.
        kernel: The input kernel, one of :data:`HSIC_KERNELS`.
        perturbation_function: One of :data:`PERTURBATIONS`, or a callable.
        perturbation_sigma: The perturbation's strength (``None``: Xplique's default).
        nb_channels: 1 (cells shared by the channels) or the number of channels.
        key: PRNG key to scramble the Sobol sequence; ``None``: the plain sequence.
        channel_axis: The channel axis of x, or ``None`` for (N, H, W) images.
        batch_size: At most this many masks per compiled call (``None``: memory budget).
        estimator_batch_size: Cells per step of the HSIC estimator (``None``: all).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        HSIC scores at the input resolution: (N, H, W) with ``nb_channels=1``, x's shape
        otherwise; x's dtype.

    Raises:
        ValueError: Unknown kernel or perturbation, ``nb_channels`` that does not fit x,
            or a target that does not fit.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x[:, :, :4, :4].sum((1, 2, 3))[:, None]   # top-left corner only
        >>> heat = jaxattr.hsic_attribution(fn, jnp.ones((1, 1, 8, 8)), grid_size=2,
        ...                                 nb_design=64)
        >>> heat.shape, bool(heat[0, 0, 0] > heat[0, 7, 7])
        ((1, 8, 8), True)
    """
    nb_design = _core.check_positive_int(nb_design, "nb_design", 2)
    _core.check_choice(kernel, "kernel", HSIC_KERNELS)
    grid_size = _core.check_positive_int(grid_size, "grid_size")
    nb_channels = _core.check_positive_int(nb_channels, "nb_channels")
    sigma = _sigma(perturbation_function, perturbation_sigma)
    if key is not None:
        key = _core.check_key(key, "hsic_attribution")
    design = sobol_sequence(nb_design, grid_size * grid_size * nb_channels, key=key)
    if kernel == "binary":
        design = jnp.round(design)
    scores, layout = _gsa(
        "hsic_attribution",
        fn,
        x,
        target,
        grid_size,
        nb_channels,
        design,
        perturbation_function,
        sigma,
        channel_axis,
        batch_size,
        args,
    )
    indices = hsic_indices(design, scores, kernel, batch_size=estimator_batch_size)
    return _heatmap(indices, grid_size, nb_channels, layout, np.dtype(jnp.asarray(x).dtype))
