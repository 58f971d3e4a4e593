"""Path methods: integrated gradients and its quadrature rules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core
from jaxattr._core import PyTree
from jaxattr._gradient import completeness_delta
from jaxattr._noise import resolve_baselines

__all__ = ["QUADRATURES", "integrated_gradients", "quadrature"]

#: The integral approximations of Captum's ``approximation_methods``.
QUADRATURES = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of an integral over [0, 1], with Captum's exact conventions.

    Riemann rules use ``n_steps`` points with weight ``1/n_steps``; ``riemann_trapezoid``
    places them on ``linspace(0, 1, n_steps)`` and halves the two end weights (so its
    weights sum to ``(n-1)/n``, as Captum's do). ``gausslegendre`` maps the Gauss-Legendre
    nodes and weights from [-1, 1] to [0, 1].

    Args:
        method: One of :data:`QUADRATURES`.
        n_steps: Number of points (>= 1; >= 2 for ``riemann_trapezoid``).

    Returns:
        ``(alphas, weights)``, two float64 arrays of shape (n_steps,).

    Example:
        >>> from jaxattr import quadrature
        >>> quadrature("riemann_right", 4)[0]
        array([0.25, 0.5 , 0.75, 1.  ])
    """
    _core.check_choice(method, "method", QUADRATURES)
    n = _core.check_positive_int(n_steps, "n_steps", 2 if method == "riemann_trapezoid" else 1)
    alphas, weights = _quadrature(method, n)
    return alphas.copy(), weights.copy()


def checked_quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``method`` and ``n_steps`` and return the cached ``(alphas, weights)``."""
    _core.check_choice(method, "method", QUADRATURES)
    n_min = 2 if method == "riemann_trapezoid" else 1
    return _quadrature(method, _core.check_positive_int(n_steps, "n_steps", n_min))


@functools.lru_cache(maxsize=64)
def _quadrature(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * w
    weights = np.full(n, 1.0 / n)
    if method == "riemann_left":
        alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
    elif method == "riemann_right":
        alphas = np.linspace(1.0 / n, 1.0, n)
    elif method == "riemann_middle":
        alphas = np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n)
    else:
        alphas = np.linspace(0.0, 1.0, n)
        weights[0] /= 2
        weights[-1] /= 2
    return alphas, weights


@_core.cached_jit(("fn", "inputs"))
def _path_gradient_sum(*, fn, inputs, x, baselines, args, target, alphas, weights):
    """``sum_s weights[s] * grad f(b + alphas[s] (x - b))``, the steps one vmapped batch."""
    return _path_sum(
        fn, inputs, x, _core.expand_baselines(baselines, x), args, target, alphas, weights
    )


def _path_sum(fn, inputs, x, baselines, args, target, alphas, weights):

    def step(alpha):
        point = jax.tree_util.tree_map(
            lambda xl, bl: bl + alpha.astype(xl.dtype) * (xl - bl), x, baselines
        )
        return _core.input_gradient(fn, inputs, point, args, target)

    grads = jax.vmap(step)(alphas)
    return jax.tree_util.tree_map(
        lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), grads
    )


@_core.cached_jit(("fn", "inputs", "multiply_by_inputs", "return_delta"))
def _finish(*, fn, inputs, x, baselines, args, target, total, multiply_by_inputs, return_delta):
    baselines = _core.expand_baselines(baselines, x)
    return _combine(fn, inputs, x, baselines, args, target, total, multiply_by_inputs, return_delta)


@_core.cached_jit(("fn", "inputs", "multiply_by_inputs", "return_delta"))
def _integrated_gradients_core(
    *, fn, inputs, x, baselines, args, target, alphas, weights, multiply_by_inputs, return_delta
):
    """Unchunked integrated gradients as one compiled program."""
    baselines = _core.expand_baselines(baselines, x)
    total = _path_sum(fn, inputs, x, baselines, args, target, alphas, weights)
    return _combine(fn, inputs, x, baselines, args, target, total, multiply_by_inputs, return_delta)


def _combine(fn, inputs, x, baselines, args, target, total, multiply_by_inputs, return_delta):
    if multiply_by_inputs:
        attr = jax.tree_util.tree_map(lambda g, xl, bl: g * (xl - bl), total, x, baselines)
    else:
        attr = total
    attr = _core.cast_like(attr, x)
    if not return_delta:
        return attr
    return attr, completeness_delta(fn, inputs, x, baselines, args, target, attr)


@_core.contract
def integrated_gradients(
    fn: Callable[..., Any],
    x: PyTree,
    baselines: Any = None,
    *,
    target: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    multiply_by_inputs: bool = True,
    batch_size: int | None = None,
    return_delta: bool = False,
    args: tuple = (),
) -> PyTree | tuple[PyTree, jax.Array]:
    """Integrated gradients (Sundararajan et al., 2017).

    ``(x - b) * integral_0^1 grad f(b + a (x - b)) da``, the integral approximated with
    ``method`` over ``n_steps`` points. The steps are one ``vmap``-ped batch; ``batch_size``
    splits them into chunks of at most that many steps so that peak memory stays bounded
    (Captum's ``internal_batch_size``, counted in steps rather than rows; the result is the
    same). ``method="riemann_right", n_steps=20`` reproduces Zennit's
    ``IntegratedGradients``.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        baselines: The reference input ``b``: ``None`` (zeros), a scalar, an array
            broadcastable to x, one entry per input of a tuple ``x``, or a callable
            ``x -> b`` (Zennit's ``baseline_fn``; one without parameters is called as is).
        target: What to explain (see :func:`jaxattr.select_target`).
        n_steps: Number of integration points.
        method: One of ``riemann_left``, ``riemann_right``, ``riemann_middle``,
            ``riemann_trapezoid`` (Captum's end-halved weights) and ``gausslegendre``.
        multiply_by_inputs: Multiply the path integral by ``x - b`` (global attribution);
            ``False`` returns the averaged gradients (local attribution).
        batch_size: At most this many steps per compiled call (``None``: all at once).
        return_delta: Also return the convergence delta
            ``sum(attr) - (f(x) - f(b))``, shape (N,).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes, or ``(attribution, delta)``.

    Raises:
        ValueError: Unknown ``method``, ``n_steps < 1``, baselines that do not broadcast,
            or a target that does not fit the output.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> attr, delta = jaxattr.integrated_gradients(
        ...     fn, jnp.array([[1.0, 2.0]]), n_steps=8, return_delta=True)
        >>> attr.round(4), delta.round(4)
        (Array([[1., 4.]], dtype=float32), Array([0.], dtype=float32))
        >>> jaxattr.integrated_gradients(fn, jnp.array([[1.0, 2.0]]),   # Zennit's baseline_fn
        ...                              baselines=lambda x: 0.5 * x, n_steps=8).round(4)
        Array([[0.75, 3.  ]], dtype=float32)
    """
    alphas, weights = checked_quadrature(method, n_steps)
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    x, args, inputs, t = _core.prepare(fn, x, target, args)
    b = _core.broadcast_baselines(resolve_baselines(baselines, x), x, inputs)
    chunks = _core.batched_chunks(len(alphas), batch_size)
    if len(chunks) == 1:
        return _integrated_gradients_core(
            fn=fn,
            inputs=inputs,
            x=x,
            baselines=b,
            args=args,
            target=t,
            alphas=alphas,
            weights=weights,
            multiply_by_inputs=multiply_by_inputs,
            return_delta=return_delta,
        )
    total = None
    for start, stop in chunks:
        part = _path_gradient_sum(
            fn=fn,
            inputs=inputs,
            x=x,
            baselines=b,
            args=args,
            target=t,
            alphas=alphas[start:stop],
            weights=weights[start:stop],
        )
        total = _core.tree_add(total, part)
    return _finish(
        fn=fn,
        inputs=inputs,
        x=x,
        baselines=b,
        args=args,
        target=t,
        total=total,
        multiply_by_inputs=multiply_by_inputs,
        return_delta=return_delta,
    )
