"""Gradient methods: gradient, saliency, input x gradient, sensitivity analysis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _core, _torchray
from jaxattr._core import Inputs, PyTree, Target

__all__ = [
    "gradient",
    "input_baseline_x_gradient",
    "input_x_gradient",
    "saliency",
    "sensitivity",
]


@_core.cached_jit(("fn", "inputs", "mode"))
def _gradient_core(*, fn, inputs: Inputs, x, args, target: Target, mode: str):
    grad = _core.input_gradient(fn, inputs, x, args, target)
    if mode == "abs":
        grad = jax.tree_util.tree_map(jnp.abs, grad)
    elif mode == "times_input":
        grad = jax.tree_util.tree_map(jnp.multiply, grad, x)
    return _core.cast_like(grad, x)


def _run_gradient(fn, x, target, args, mode):
    x, args, inputs, t = _core.prepare(fn, x, target, args)
    return _gradient_core(fn=fn, inputs=inputs, x=x, args=args, target=t, mode=mode)


@_core.contract
def gradient(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    args: tuple = (),
    saliency_layer: str | None = None,
    gradient_to_saliency: bool | Callable[[jax.Array], jax.Array] = False,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    channel_axis: int = 1,
) -> PyTree:
    """The plain gradient of the explained output with respect to the input.

    Zennit's ``Gradient`` attributor (and Captum's ``Saliency(abs=False)``). With a
    cotangent or callable ``target`` this is the vector-Jacobian product Zennit computes
    with its ``attr_output``.

    TorchRay's ``gradient`` takes the same options as its ``saliency``; here they default
    to the raw gradient. ``gradient_to_saliency=True`` gives TorchRay's map (the max of
    ``|gradient|`` over ``channel_axis``, kept with size 1), ``saliency_layer`` reads the
    gradient at a layer's output instead of the input (``fn`` must then be a structured
    model such as a bridged torch module), ``resize`` upsamples the map and ``smooth``
    blurs it, in that order, exactly as TorchRay.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...). A tuple
            ``x`` is unpacked, ``fn(*x)``.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain; see :func:`jaxattr.select_target` for every form (``None``,
            int, tuple, per-example list/array, cotangent array, callable).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.
        saliency_layer: Read the gradient at this layer's output (TorchRay's
            ``saliency_layer``; ``None`` or ``""``: the input).
        gradient_to_saliency: ``False`` (the raw gradient), ``True`` (TorchRay's
            ``gradient_to_saliency``: max of ``|g|`` over ``channel_axis``) or a function
            of the gradient array.
        resize: ``False``; ``True`` (or ``"input"``) resizes the map to x's spatial size;
            a tuple gives the size in TorchRay's (width, height) order, i.e. the spatial
            sizes reversed.
        resize_mode: ``"bilinear"`` (TorchRay's default, ``align_corners=False``),
            ``"linear"``, ``"trilinear"`` or ``"nearest"``.
        smooth: If > 0, blur with TorchRay's ``imsmooth`` (Gaussian, replicate padding) of
            standard deviation ``smooth * max(spatial size)``, after resizing.
        channel_axis: The channel axis of the map (1 for NCHW, -1 for NHWC).

    Returns:
        The gradient, with the structure, shapes and dtypes of ``x``; with
        ``saliency_layer``, the layer output's shape; ``gradient_to_saliency`` reduces the
        channel axis to size 1 and ``resize`` changes the spatial sizes.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: jnp.stack([x.sum(1), (x ** 2).sum(1)], axis=1)
        >>> jaxattr.gradient(fn, jnp.array([[1.0, 2.0]]), target=1)
        Array([[2., 4.]], dtype=float32)
        >>> img = jnp.arange(2 * 3 * 4.0).reshape(1, 2, 3, 4)   # TorchRay's saliency map
        >>> sal = jaxattr.gradient(lambda x: (x ** 2).sum((1, 2, 3))[:, None], img, target=0,
        ...                        gradient_to_saliency=True, resize=(8, 6), smooth=0.02)
        >>> sal.shape
        (1, 1, 6, 8)
    """
    if saliency_layer:
        g = _torchray.layer_gradient(fn, x, target, args, saliency_layer, None, method="gradient")
    else:
        g = _run_gradient(fn, x, target, args, "plain")
    return _torchray_finish(g, x, gradient_to_saliency, resize, resize_mode, smooth, channel_axis)


def _torchray_finish(g, x, gradient_to_saliency, resize, resize_mode, smooth, channel_axis):
    """TorchRay's post-processing (conversion, resize, smoothing); the identity by default."""
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    reduce = _torchray.reducer(gradient_to_saliency, channel_axis)
    return _torchray.finish_tree(
        g,
        _core.to_arrays(x),
        reduce=reduce,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


@_core.contract
def saliency(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    abs: bool = True,  # noqa: A002 - Captum's option name
    args: tuple = (),
) -> PyTree:
    """Saliency maps (Simonyan et al., 2013): the absolute input gradient.

    Captum's ``Saliency``: ``abs=True`` by default; ``abs=False`` gives the signed gradient.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain (see :func:`gradient`).
        abs: Return ``|gradient|`` (default) or the signed gradient.
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The saliency map, with the structure, shapes and dtypes of ``x``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x @ jnp.array([[1.0], [-3.0]])
        >>> jaxattr.saliency(fn, jnp.ones((1, 2)))
        Array([[1., 3.]], dtype=float32)
    """
    return _run_gradient(fn, x, target, args, "abs" if abs else "plain")


@_core.contract
def input_x_gradient(
    fn: Callable[..., Any], x: PyTree, *, target: Any = None, args: tuple = ()
) -> PyTree:
    """Input times gradient (Shrikumar et al., 2016).

    Captum's ``InputXGradient`` and Zennit's ``GradientTimesInput`` example attributor.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain (see :func:`gradient`).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        ``x * gradient``, with the structure, shapes and dtypes of ``x``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> jaxattr.input_x_gradient(fn, jnp.array([[1.0, 3.0]]))
        Array([[ 2., 18.]], dtype=float32)
    """
    return _run_gradient(fn, x, target, args, "times_input")


@_core.contract
def sensitivity(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    sum_channels: bool = False,
    channel_axis: int = 1,
    args: tuple = (),
) -> PyTree:
    """Sensitivity analysis: the absolute gradient, optionally summed over channels.

    Zennit's ``SensitivityAnalysis`` example attributor. With ``sum_channels=True`` the
    channel axis is summed away, so an (N, C, H, W) input gives an (N, H, W) map.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain (see :func:`gradient`).
        sum_channels: Sum ``|gradient|`` over ``channel_axis``.
        channel_axis: The channel axis of every input (1 for NCHW, -1 for NHWC).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        ``|gradient|`` with x's structure; each leaf has x's shape, minus ``channel_axis``
        when ``sum_channels`` is set.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: -x.sum((1, 2))
        >>> jaxattr.sensitivity(fn, jnp.ones((1, 2, 3)), sum_channels=True).shape
        (1, 3)
    """
    attr = _run_gradient(fn, x, target, args, "abs")
    if not sum_channels:
        return attr

    def reduce(a):
        axis = channel_axis if channel_axis >= 0 else a.ndim + channel_axis
        if not 1 <= axis < a.ndim:
            raise ValueError(
                f"channel_axis must name a non-batch axis of every input, got {channel_axis} "
                f"for an input of rank {a.ndim}"
            )
        return a.sum(axis)

    return jax.tree_util.tree_map(reduce, attr)


@_core.cached_jit(("fn", "inputs", "multiply_by_inputs", "return_delta"))
def _ibxg_core(*, fn, inputs, x, baselines, alphas, args, target, multiply_by_inputs, return_delta):
    baselines = _core.expand_baselines(baselines, x)

    def scale(xl, bl):
        a = alphas.reshape((-1,) + (1,) * (xl.ndim - 1)).astype(xl.dtype)
        return bl + a * (xl - bl)

    point = jax.tree_util.tree_map(scale, x, baselines)
    grad = _core.input_gradient(fn, inputs, point, args, target)
    if multiply_by_inputs:
        attr = jax.tree_util.tree_map(lambda g, xl, bl: g * (xl - bl), grad, x, baselines)
    else:
        attr = grad
    attr = _core.cast_like(attr, x)
    if not return_delta:
        return attr
    return attr, completeness_delta(fn, inputs, x, baselines, args, target, attr)


def completeness_delta(fn, inputs, x, baselines, args, target, attr):
    """``sum(attr) - (f(x) - f(baseline))`` per example, shape (N,)."""
    total = _core.example_sums(attr)
    diff = _core.scores(fn, inputs, x, args, target) - _core.scores(
        fn, inputs, baselines, args, target
    )
    return total - diff.astype(total.dtype)


@_core.contract
def input_baseline_x_gradient(
    fn: Callable[..., Any],
    x: PyTree,
    baselines: Any = None,
    *,
    key: jax.Array | None = None,
    alphas: jax.Array | None = None,
    target: Any = None,
    multiply_by_inputs: bool = True,
    return_delta: bool = False,
    args: tuple = (),
) -> PyTree | tuple[PyTree, jax.Array]:
    """(input - baseline) times the gradient at a random point between them.

    Captum's ``InputBaselineXGradient`` (the inner step of GradientShap): each example's
    gradient is taken at ``baseline + alpha * (x - baseline)``, ``alpha ~ U[0, 1]`` drawn
    from ``key`` (or given as ``alphas``), then multiplied by ``x - baseline``.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        baselines: Reference input(s) broadcastable to x (default zeros).
        key: PRNG key for the per-example ``alpha`` (required unless ``alphas`` is given).
        alphas: Explicit interpolation coefficients, shape (N,).
        target: What to explain (see :func:`gradient`).
        multiply_by_inputs: Multiply by ``x - baseline`` (Captum's global attribution);
            ``False`` returns the gradient alone (local attribution).
        return_delta: Also return ``sum(attr) - (f(x) - f(baseline))``, shape (N,).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, or ``(attribution, delta)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> jaxattr.input_baseline_x_gradient(fn, jnp.ones((1, 2)), key=jax.random.key(0))
        Array([[2., 2.]], dtype=float32)
    """
    x, args, inputs, t = _core.prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    if alphas is None:
        key = _core.check_key(key, "input_baseline_x_gradient (alpha ~ U[0, 1])")
        alphas = jax.random.uniform(key, (inputs.n,))
    else:
        alphas = jnp.asarray(alphas)
        if alphas.shape != (inputs.n,):
            raise ValueError(
                f"alphas must have shape (N,) = ({inputs.n},), got {tuple(alphas.shape)}"
            )
    return _ibxg_core(
        fn=fn,
        inputs=inputs,
        x=x,
        baselines=b,
        alphas=alphas,
        args=args,
        target=t,
        multiply_by_inputs=multiply_by_inputs,
        return_delta=return_delta,
    )
