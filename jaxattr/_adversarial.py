"""Adversarial perturbations: FGSM and PGD with Captum's ``captum.robust`` semantics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core
from jaxattr._core import PyTree

__all__ = ["fgsm", "pgd"]

#: Gradients smaller than this in magnitude leave the input unchanged (Captum's
#: ``zero_thresh``).
ZERO_THRESHOLD = 1e-6
NORMS = ("Linf", "L2")


def _loss(fn, inputs, x, args, target, loss_func, labels):
    y = inputs.call(fn, x, args)
    if loss_func is None:  # Captum's default: negative log of the selected output
        return jnp.sum(_core.target_score(-jnp.log(y), target))
    return jnp.sum(loss_func(y, labels))


def _fgsm_step(fn, inputs, x, args, target, loss_func, labels, epsilon, targeted, masks):
    grads = jax.grad(lambda x_: _loss(fn, inputs, x_, args, target, loss_func, labels))(x)
    sign = jnp.where(targeted, -1.0, 1.0)

    def step(xl, g, m):
        d, m = _core.promote(sign * epsilon * jnp.sign(g), m)
        moved = xl + (d * _core.expand_rank(m, d.ndim)).astype(xl.dtype)
        return jnp.where(jnp.abs(g) > ZERO_THRESHOLD, moved, xl)

    return jax.tree_util.tree_map(step, x, grads, masks)


def _bound(x, lower, upper):
    return jax.tree_util.tree_map(
        lambda a: jnp.clip(a, jnp.asarray(lower, a.dtype), jnp.asarray(upper, a.dtype)), x
    )


@_core.cached_jit(("fn", "inputs", "loss_func"))
def _fgsm_core(
    *, fn, inputs, x, args, target, loss_func, labels, epsilon, targeted, masks, lower, upper
):
    out = _fgsm_step(fn, inputs, x, args, target, loss_func, labels, epsilon, targeted, masks)
    return _bound(out, lower, upper)


def _masks(mask: Any, x: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if mask is None:
        return jax.tree_util.tree_unflatten(treedef, [np.float32(1.0)] * len(leaves))
    if hasattr(mask, "shape") and len(leaves) == 1:
        ms = [mask]
    elif hasattr(mask, "shape"):
        ms = [mask] * len(leaves)
    else:
        try:
            ms = treedef.flatten_up_to(mask)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"mask must be an array or match the structure of x ({treedef})"
            ) from err
    out = []
    for i, (leaf, m) in enumerate(zip(leaves, ms, strict=False)):
        m = jnp.asarray(m)
        try:
            ok = np.broadcast_shapes(tuple(m.shape), tuple(leaf.shape)) == tuple(leaf.shape)
        except ValueError:
            ok = False
        if not ok:
            name = f"mask[{i}]" if len(leaves) > 1 else "mask"
            raise ValueError(
                f"{name} has shape {tuple(m.shape)}, which does not broadcast to "
                f"the input shape {tuple(leaf.shape)}"
            )
        out.append(m.astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _prepare(fn, x, target, args, loss_func):
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    if loss_func is None:
        t, labels = _core.prepare_target(target, fn, inputs, x, args), None
    else:
        if not callable(loss_func):
            raise TypeError(f"loss_func must be callable, got {type(loss_func).__name__}")
        t, labels = None, _core.to_arrays(target)
    return x, args, inputs, t, labels


def _check_float(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


@_core.contract
def fgsm(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    epsilon: float,
    target: Any = None,
    targeted: bool = False,
    mask: Any = None,
    loss_func: Callable[[jax.Array, Any], jax.Array] | None = None,
    lower_bound: float = float("-inf"),
    upper_bound: float = float("inf"),
    args: tuple = (),
) -> PyTree:
    """Fast Gradient Sign Method (Goodfellow et al., 2015), Captum's ``FGSM.perturb``.

    ``x' = x + epsilon * sign(grad L)`` (``x - ...`` for a targeted attack), only where
    ``|grad L| > 1e-6`` and ``mask`` is set, clipped to ``[lower_bound, upper_bound]``.
    The loss ``L`` is Captum's default, the negative log of the target output (so ``fn``
    should return probabilities), or ``loss_func(y, target)``.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        epsilon: Step size.
        target: The true labels (untargeted) or the attack's target (targeted): any
            target form (see :func:`jaxattr.select_target`) for the default loss, passed
            unchanged to ``loss_func`` otherwise.
        targeted: Step towards ``target`` instead of away from it.
        mask: 0/1 array (one per input for a tuple) of the elements that may change.
        loss_func: ``loss_func(y, target) -> loss`` (per example or summed).
        lower_bound: Smallest allowed input value.
        upper_bound: Largest allowed input value.
        args: Extra positional arrays passed to ``fn`` after ``x``; not perturbed.

    Returns:
        The perturbed input, with x's structure, shapes and dtypes.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: jnp.exp(x) / jnp.exp(x).sum(1, keepdims=True)
        >>> jaxattr.fgsm(fn, jnp.zeros((1, 2)), epsilon=0.1, target=0)
        Array([[-0.1,  0.1]], dtype=float32)
    """
    epsilon = _check_float(epsilon, "epsilon")
    x, args, inputs, t, labels = _prepare(fn, x, target, args, loss_func)
    return _fgsm_core(
        fn=fn,
        inputs=inputs,
        x=x,
        args=args,
        target=t,
        loss_func=loss_func,
        labels=labels,
        epsilon=epsilon,
        targeted=bool(targeted),
        masks=_masks(mask, x),
        lower=lower_bound,
        upper=upper_bound,
    )


def _project(x0, xs, radius, norm):
    def one(a, b):
        diff = b - a
        if norm == "Linf":
            return a + jnp.clip(diff, -radius, radius).astype(a.dtype)
        flat = diff.reshape(diff.shape[0], -1).astype(jnp.float32)
        nrm = jnp.sqrt(jnp.sum(flat * flat, axis=1))
        scale = jnp.where(nrm > radius, radius / (nrm + 1e-7), 1.0)
        diff, scale = _core.promote(diff, scale.reshape((-1,) + (1,) * (diff.ndim - 1)))
        return a + (diff * scale).astype(a.dtype)

    return jax.tree_util.tree_map(one, x0, xs)


def pgd_random_start(key: jax.Array, x: PyTree, radius: float, norm: str, masks: PyTree) -> PyTree:
    """The random start of :func:`pgd`: a uniform point in the ``norm`` ball around x.

    Linf: ``x + U(-radius, radius)``; L2: a uniformly random direction scaled by
    ``radius * u^(1/d)`` per example (``d`` elements), as Captum intends (Captum's code
    broadcasts the per-example radius against the last axis, correct only for N=1).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    m_leaves = treedef.flatten_up_to(masks)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf, m in zip(keys, leaves, m_leaves, strict=False):
        if norm == "Linf":
            u = jax.random.uniform(k, leaf.shape, jnp.float32)
            step = u * radius * 2 - radius
        else:
            k1, k2 = jax.random.split(k)
            u = jax.random.normal(k1, leaf.shape, jnp.float32)
            flat = u.reshape(leaf.shape[0], -1)
            unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
            d = flat.shape[1]
            r = jax.random.uniform(k2, (leaf.shape[0], 1)) ** (1.0 / d) * radius
            step = (r * unit).reshape(leaf.shape)
        step, m = _core.promote(step, m)
        out.append(leaf + (step * _core.expand_rank(m, step.ndim)).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


@_core.cached_jit(("fn", "inputs", "loss_func", "norm", "random_start"))
def _pgd_core(
    *,
    fn,
    inputs,
    x,
    args,
    target,
    loss_func,
    labels,
    radius,
    step_size,
    step_num,
    norm,
    targeted,
    random_start,
    key,
    masks,
    lower,
    upper,
):
    xs = x
    if random_start:
        xs = _bound(pgd_random_start(key, x, radius, norm, masks), lower, upper)

    def body(_, xs):
        xs = _fgsm_step(fn, inputs, xs, args, target, loss_func, labels, step_size, targeted, masks)
        return _bound(_project(x, xs, radius, norm), lower, upper)

    return jax.lax.fori_loop(0, step_num, body, xs)


@_core.contract
def pgd(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    radius: float,
    step_size: float,
    step_num: int,
    target: Any = None,
    norm: str = "Linf",
    targeted: bool = False,
    random_start: bool = False,
    key: jax.Array | None = None,
    mask: Any = None,
    loss_func: Callable[[jax.Array, Any], jax.Array] | None = None,
    lower_bound: float = float("-inf"),
    upper_bound: float = float("inf"),
    args: tuple = (),
) -> PyTree:
    """Projected gradient descent (Madry et al., 2018), Captum's ``PGD.perturb``.

    ``step_num`` FGSM steps of ``step_size`` (sign steps, for either norm, as Captum),
    each followed by the projection onto the ``norm`` ball of ``radius`` around x (Linf:
    clamp; L2: rescale per example when the norm exceeds the radius, as
    ``torch.renorm``) and the clip to ``[lower_bound, upper_bound]``. With
    ``random_start`` the walk starts at a uniform point of the ball
    (:func:`pgd_random_start`, drawn from ``key``).

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        radius: Radius of the ball the perturbation stays in.
        step_size: Size of each FGSM step.
        step_num: Number of steps.
        target: True labels or attack target (see :func:`fgsm`).
        norm: ``"Linf"`` or ``"L2"``.
        targeted: Step towards ``target``.
        random_start: Start at a random point of the ball (needs ``key``).
        key: PRNG key of the random start.
        mask: 0/1 array (one per input for a tuple) of the elements that may change.
        loss_func: ``loss_func(y, target) -> loss``; default negative log of the target.
        lower_bound: Smallest allowed input value.
        upper_bound: Largest allowed input value.
        args: Extra positional arrays passed to ``fn`` after ``x``; not perturbed.

    Returns:
        The perturbed input, with x's structure, shapes and dtypes.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: jnp.exp(x) / jnp.exp(x).sum(1, keepdims=True)
        >>> jaxattr.pgd(fn, jnp.zeros((1, 2)), radius=0.25, step_size=0.1, step_num=5,
        ...             target=0)
        Array([[-0.25,  0.25]], dtype=float32)
    """
    _core.check_choice(norm, "norm", NORMS)
    radius = _check_float(radius, "radius")
    step_size = _check_float(step_size, "step_size")
    step_num = _core.check_positive_int(step_num, "step_num", 0)
    if random_start:
        key = _core.check_key(key, "pgd with random_start=True")
    x, args, inputs, t, labels = _prepare(fn, x, target, args, loss_func)
    return _pgd_core(
        fn=fn,
        inputs=inputs,
        x=x,
        args=args,
        target=t,
        loss_func=loss_func,
        labels=labels,
        radius=radius,
        step_size=step_size,
        step_num=step_num,
        norm=norm,
        targeted=bool(targeted),
        random_start=bool(random_start),
        key=key if random_start else None,
        masks=_masks(mask, x),
        lower=lower_bound,
        upper=upper_bound,
    )
