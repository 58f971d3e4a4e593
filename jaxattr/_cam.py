"""Class activation maps: Grad-CAM, Grad-CAM++, Score-CAM, guided Grad-CAM, linear approximation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core, _taps, _torchray
from jaxattr._core import PyTree
from jaxattr._layer import Setup, _batch, layer_gradient_x_activation

__all__ = [
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_to_saliency",
    "guided_grad_cam",
    "interpolate",
    "linear_approx",
    "score_cam",
]

Model = Any


# --------------------------------------------------------------------------------------
# Class activation maps
# --------------------------------------------------------------------------------------


def interpolate(
    attr: jax.Array, size: Sequence[int], *, mode: str = "nearest", channel_axis: int = 1
) -> jax.Array:
    """Resize a layer attribution's spatial axes (Captum's ``LayerAttribution.interpolate``).

    ``nearest`` uses torch's index rule ``floor(i * in / out)``; ``bilinear`` / ``linear``
    / ``trilinear`` use half-pixel centres (torch's ``align_corners=False``).

    Args:
        attr: Array (N, C, *spatial) for ``channel_axis=1`` or (N, *spatial, C) for -1.
        size: Target spatial size, one entry per spatial axis.
        mode: ``nearest``, ``linear``, ``bilinear`` or ``trilinear``.
        channel_axis: 1 (NCHW, torch) or -1 (NHWC, Flax).

    Returns:
        The resized array, channels kept.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.interpolate(jnp.arange(4.0).reshape(1, 1, 2, 2), (4, 4))[0, 0, 0]
        Array([0., 0., 1., 1.], dtype=float32)
    """
    _core.check_choice(mode, "mode", ("nearest", "linear", "bilinear", "trilinear"))
    attr = jnp.asarray(attr)
    axis = channel_axis % attr.ndim
    spatial = [a for a in range(1, attr.ndim) if a != axis]
    size = tuple(int(s) for s in size)
    if len(size) != len(spatial):
        raise ValueError(
            f"size must give one entry per spatial axis ({len(spatial)} for an attribution of "
            f"shape {tuple(attr.shape)}), got {size}"
        )
    if mode == "nearest":
        for a, out in zip(spatial, size, strict=False):
            n_in = attr.shape[a]
            idx = np.minimum(np.floor(np.arange(out) * (n_in / out)).astype(np.int32), n_in - 1)
            attr = jnp.take(attr, idx, axis=a)
        return attr
    shape = list(attr.shape)
    for a, out in zip(spatial, size, strict=False):
        shape[a] = out
    return jax.image.resize(attr, tuple(shape), method="linear", antialias=False)


@_core.cached_jit(("model", "inputs", "taps", "channel_axis", "mode"))
def _cam_core(*, model, inputs, taps, params, x, args, kwargs, target, channel_axis, mode):
    """One weighted activation per tap (per tensor of a layer returning a tuple)."""
    grads, acts, _ = _taps.layer_gradients(model, params, inputs, x, args, kwargs, taps, target)
    return tuple(_cam_weighted(grads[t.key], acts[t.key], channel_axis, mode) for t in taps)


def _cam_weighted(g, a, channel_axis, mode):
    axis = channel_axis % a.ndim
    spatial = tuple(i for i in range(1, a.ndim) if i != axis)
    if mode == "gradcam":
        weights = g.mean(spatial, keepdims=True) if spatial else g
    else:  # grad-cam++ (Chattopadhyay et al., 2018), exponential-score closed form
        g2, g3 = g**2, g**3
        denom = 2 * g2 + jnp.sum(a, axis=spatial, keepdims=True) * g3
        alpha = g2 / jnp.where(denom != 0, denom, 1.0)
        weights = jnp.sum(alpha * jax.nn.relu(g), axis=spatial, keepdims=True)
    return weights * a


@_core.contract
def grad_cam(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    relu_attributions: bool = False,
    attr_dim_summation: bool = True,
    attribute_to_layer_input: bool = False,
    channel_axis: int = 1,
    interpolate_to: Sequence[int] | str | None = None,
    interpolate_mode: str = "nearest",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
) -> jax.Array | tuple[jax.Array, ...]:
    """Grad-CAM (Selvaraju et al., 2017), Captum's ``LayerGradCam``.

    Each channel of the layer is weighted by its spatially averaged gradient; the weighted
    activations are summed over channels (``attr_dim_summation``) and optionally passed
    through a ReLU (``relu_attributions``).

    TorchRay's ``grad_cam(model, x, target, saliency_layer=layer)`` is
    ``relu_attributions=True``; its ``resize`` (bilinear by default) and ``smooth``
    (Gaussian of standard deviation ``smooth * max(spatial size)``, replicate padding)
    are the options of the same names, applied in that order after the ReLU.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name (``"layer4"`` of a ResNet, ``"conv3"`` of the demo model).
        target: What to explain (see :func:`jaxattr.select_target`).
        relu_attributions: Keep only positive evidence.
        attr_dim_summation: Sum over the channel axis (keeping it with size 1).
        attribute_to_layer_input: Use the layer's input instead of its output.
        channel_axis: 1 for NCHW layers (torch), -1 for NHWC (Flax).
        interpolate_to: Upsample the map to this spatial size, or ``"input"`` for the
            spatial size of ``x`` (same layout); ``None`` keeps the layer's size.
        interpolate_mode: See :func:`interpolate`.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).
        resize: TorchRay's ``resize``: ``False``; ``True`` (or ``"input"``) for x's
            spatial size; a tuple in TorchRay's (width, height) order. Not together with
            ``interpolate_to``.
        resize_mode: TorchRay's ``resize_mode``: ``"bilinear"`` (``align_corners=False``),
            ``"linear"``, ``"trilinear"`` or ``"nearest"``.
        smooth: If > 0, TorchRay's smoothing after resizing (see above).

    Returns:
        (N, 1, *spatial) for ``channel_axis=1`` (channels last for -1), or the full
        activation shape without ``attr_dim_summation``; a tuple for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors (one map per
        tensor, each weighted by its own gradient, as Captum).

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> cam = jaxattr.grad_cam(model, make_shapes(2)[0], "conv3", target=[0, 1],
        ...                        channel_axis=-1, interpolate_to="input")
        >>> cam.shape
        (2, 32, 32, 1)
        >>> tr = jaxattr.grad_cam(model, make_shapes(2)[0], "conv3", target=[0, 1],
        ...                       channel_axis=-1, relu_attributions=True, resize=True,
        ...                       smooth=0.02)   # TorchRay's grad_cam(resize=True, smooth=.02)
        >>> tr.shape
        (2, 32, 32, 1)
    """
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    if resize is not False and interpolate_to is not None:
        raise ValueError(
            f"pass interpolate_to (Captum-style) or resize (TorchRay's), not both; got "
            f"interpolate_to={interpolate_to!r} and resize={resize!r}"
        )
    cam = _cam(
        model,
        x,
        layer,
        "gradcam",
        target,
        relu_attributions,
        attr_dim_summation,
        attribute_to_layer_input,
        channel_axis,
        interpolate_to,
        interpolate_mode,
        args,
        kwargs,
        params,
    )
    return _torchray.finish_tree(
        cam,
        _core.to_arrays(x),
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


@_core.contract
def grad_cam_plus_plus(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    attribute_to_layer_input: bool = False,
    channel_axis: int = 1,
    interpolate_to: Sequence[int] | str | None = None,
    interpolate_mode: str = "nearest",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Grad-CAM++ (Chattopadhyay et al., 2018).

    Channel weights ``w_k = sum_ij alpha_kij relu(g_kij)`` with
    ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (the paper's closed form under an
    exponential score, with ``g`` the gradient of the target score); the map is
    ``relu(sum_k w_k A_k)``.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        target: What to explain (see :func:`jaxattr.select_target`).
        attribute_to_layer_input: Use the layer's input instead of its output.
        channel_axis: 1 for NCHW layers, -1 for NHWC.
        interpolate_to: As in :func:`grad_cam`.
        interpolate_mode: See :func:`interpolate`.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        (N, 1, *spatial) for ``channel_axis=1`` (channels last for -1); a tuple for a layer
        returning a tuple or, with ``attribute_to_layer_input``, receiving several tensors
        (one map per tensor, as :func:`grad_cam`).

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.grad_cam_plus_plus(model, make_shapes(1)[0], "conv3", target=0,
        ...                            channel_axis=-1).shape
        (1, 8, 8, 1)
    """
    return _cam(
        model,
        x,
        layer,
        "gradcam++",
        target,
        True,
        True,
        attribute_to_layer_input,
        channel_axis,
        interpolate_to,
        interpolate_mode,
        args,
        kwargs,
        params,
    )


def _cam(
    model,
    x,
    layer,
    mode,
    target,
    relu,
    summation,
    to_input,
    channel_axis,
    interp,
    interp_mode,
    args,
    kwargs,
    params,
):
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}")
    s = Setup(
        {"gradcam": "grad_cam", "gradcam++": "grad_cam_plus_plus"}[mode],
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=to_input,
        tuple_ok=True,
    )
    cams = []
    # a layer returning a tuple: one map per tensor, each from its own gradient (Captum)
    for cam in _cam_core(**s.common(), target=s.target, channel_axis=channel_axis, mode=mode):
        if summation:
            cam = cam.sum(axis=channel_axis % cam.ndim, keepdims=True)
        if relu:
            cam = jax.nn.relu(cam)
        cams.append(_maybe_interpolate(cam, interp, interp_mode, channel_axis, s.x))
    return s.out(cams)


def _maybe_interpolate(cam, interp, mode, channel_axis, x):
    if interp is None:
        return cam
    if isinstance(interp, str):
        if interp != "input":
            raise ValueError(f"interpolate_to must be a size or 'input', got {interp!r}")
        leaf = jax.tree_util.tree_leaves(x)[0]
        axis = channel_axis % leaf.ndim
        interp = [leaf.shape[i] for i in range(1, leaf.ndim) if i != axis]
    return interpolate(cam, interp, mode=mode, channel_axis=channel_axis)


@_core.cached_jit(("model", "inputs", "taps", "channel_axis", "softmax_over_channels"))
def _score_cam_chunk(
    *,
    model,
    inputs,
    taps,
    params,
    x,
    args,
    kwargs,
    target,
    channels,
    channel_axis,
    softmax_over_channels,
):
    del softmax_over_channels
    (tap,) = taps
    _, acts = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps)
    a = acts[tap.key]
    axis = channel_axis % a.ndim
    xin = x[0] if inputs.is_tuple else x
    x_axis = channel_axis % xin.ndim
    size = [xin.shape[i] for i in range(1, xin.ndim) if i != x_axis]
    fn = lambda *z: model.apply(params, *z, **dict(kwargs))  # noqa: E731

    def one(k):
        amap = (
            jnp.take(a, k, axis=axis)[..., None]
            if axis == a.ndim - 1
            else jnp.expand_dims(jnp.take(a, k, axis=axis), axis)
        )
        up = interpolate(amap, size, mode="bilinear", channel_axis=channel_axis)
        red = tuple(range(1, up.ndim))
        lo, hi = up.min(red, keepdims=True), up.max(red, keepdims=True)
        m = jnp.where(hi > lo, (up - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
        masked = xin * m.astype(xin.dtype)
        z = (masked, *x[1:]) if inputs.is_tuple else masked
        return _core.target_score(inputs.call(fn, z, args), target)

    return jax.vmap(one)(channels), a


@_core.contract
def score_cam(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    channel_axis: int = 1,
    softmax_over_channels: bool = True,
    batch_size: int | None = None,
    interpolate_to: Sequence[int] | str | None = None,
    interpolate_mode: str = "nearest",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array:
    """Score-CAM (Wang et al., 2020): channel weights from masked forward passes.

    Each channel ``A_k`` of the layer is upsampled to the input size (bilinear),
    min-max normalised to [0, 1] and multiplied into the input; the target score of that
    masked input is the channel's score. The weights are the softmax of the scores over
    channels (the paper's Algorithm 1; ``softmax_over_channels=False`` uses the raw
    scores) and the map is ``relu(sum_k w_k A_k)``. Gradient-free. The masked inputs are
    one ``vmap``-ped batch, chunked by ``batch_size`` channels.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...) (the first input is masked for tuples).
        layer: The layer name.
        target: What to explain (see :func:`jaxattr.select_target`); its score on each
            masked input is the channel score (use a softmax output for probabilities).
        channel_axis: 1 for NCHW layers and inputs, -1 for NHWC.
        softmax_over_channels: Normalise the scores with a softmax over channels.
        batch_size: At most this many channels per compiled call.
        interpolate_to: As in :func:`grad_cam`.
        interpolate_mode: See :func:`interpolate`.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        (N, 1, *spatial) at the layer's resolution for ``channel_axis=1`` (channels last
        for -1), unless ``interpolate_to`` is given.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.score_cam(model, make_shapes(1)[0], "conv3", target=0,
        ...                   channel_axis=-1).shape
        (1, 8, 8, 1)
    """
    s = Setup(
        "score_cam",
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=False,
        need_float=True,
    )
    (tap,) = s.taps
    shape = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    act_shape = tuple(shape[tap.key].shape)
    n_channels = act_shape[channel_axis % len(act_shape)]
    channels = np.arange(n_channels, dtype=np.int32)
    scores, a = [], None
    for start, stop in _core.batched_chunks(n_channels, _batch(batch_size)):
        sc, a = _score_cam_chunk(
            **s.common(),
            target=s.target,
            channels=channels[start:stop],
            channel_axis=channel_axis,
            softmax_over_channels=softmax_over_channels,
        )
        scores.append(sc)
    scores = jnp.concatenate(scores, axis=0).T  # (N, K)
    weights = jax.nn.softmax(scores, axis=1) if softmax_over_channels else scores
    axis = channel_axis % a.ndim
    wshape = [1] * a.ndim
    wshape[0], wshape[axis] = a.shape[0], a.shape[axis]
    cam = jax.nn.relu(jnp.sum(weights.reshape(wshape) * a, axis=axis, keepdims=True))
    return _maybe_interpolate(cam, interpolate_to, interpolate_mode, channel_axis, s.x)


def gradient_to_saliency(grad: jax.Array, *, channel_axis: int = 1) -> jax.Array:
    """TorchRay's ``gradient_to_saliency``: the max of ``|grad|`` over channels.

    Args:
        grad: A gradient of shape (N, C, ...) (or channels last with ``channel_axis=-1``).
        channel_axis: The channel axis.

    Returns:
        Shape of ``grad`` with the channel axis reduced to size 1.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.gradient_to_saliency(jnp.array([[[1.0], [-3.0]]]))
        Array([[[3.]]], dtype=float32)
    """
    return jnp.max(jnp.abs(jnp.asarray(grad)), axis=channel_axis, keepdims=True)


@_core.contract
def linear_approx(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    channel_axis: int = 1,
    resize: bool | str | Sequence[int] | None = False,
    resize_mode: str = "bilinear",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
    smooth: float = 0.0,
) -> jax.Array:
    """TorchRay's linear approximation: ``sum_c(activation * gradient)`` at a layer.

    ``linear_approx(model, x, layer, target=t, resize=..., smooth=...)`` is TorchRay's
    ``linear_approx(model, x, t, saliency_layer=layer, resize=..., smooth=...)``: the map
    is resized, then smoothed with a Gaussian of standard deviation
    ``smooth * max(spatial size)`` (replicate padding).

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name (TorchRay's ``saliency_layer``).
        target: What to explain (see :func:`jaxattr.select_target`).
        channel_axis: 1 for NCHW layers, -1 for NHWC.
        resize: TorchRay's ``resize``: ``False``/``None``; ``True`` (or ``"input"``) for
            x's spatial size; a tuple in TorchRay's (width, height) order, i.e. the
            spatial sizes reversed.
        resize_mode: ``"bilinear"`` (TorchRay's default, ``align_corners=False``),
            ``"linear"``, ``"trilinear"`` or ``"nearest"``.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).
        smooth: If > 0, TorchRay's smoothing after resizing.

    Returns:
        (N, 1, *spatial) for ``channel_axis=1`` (channels last for -1).

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.linear_approx(model, make_shapes(1)[0], "conv3", target=0,
        ...                       channel_axis=-1, resize="input").shape
        (1, 32, 32, 1)
    """
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    gx = layer_gradient_x_activation(
        model, x, layer, target=target, args=args, kwargs=kwargs, params=params
    )
    sal = gx.sum(axis=channel_axis, keepdims=True)
    return _torchray.finish_tree(
        sal,
        _core.to_arrays(x),
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


def _check_custom(func: Any) -> None:
    if func is not None and not callable(func):
        raise TypeError(
            f"custom_attribution_func must be callable (multipliers[, inputs[, baselines]]) "
            f"-> attribution, got {type(func).__name__}"
        )


@_core.contract
def guided_grad_cam(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    interpolate_mode: str = "nearest",
    attribute_to_layer_input: bool = False,
    channel_axis: int = 1,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> PyTree:
    """Guided Grad-CAM (Selvaraju et al., 2017), Captum's ``GuidedGradCam``.

    Guided backpropagation times the ReLU'd Grad-CAM map upsampled to the input
    (``interpolate_mode``), element by element.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, C, ...) (channels last with
            ``channel_axis=-1``), or a tuple (each input is multiplied by the map).
        layer: The Grad-CAM layer.
        target: What to explain (see :func:`jaxattr.select_target`).
        interpolate_mode: See :func:`interpolate`.
        attribute_to_layer_input: Grad-CAM on the layer's input.
        channel_axis: 1 (NCHW) or -1 (NHWC), for the layer and the input.
        args: Extra positional model inputs.
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.guided_grad_cam(demo_model(), make_shapes(1)[0], "conv3", target=0,
        ...                         channel_axis=-1).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import guided_backprop

    # one map to upsample: a layer returning a tuple is the named error (Captum refuses it)
    _taps.resolve_single(
        _core.check_structured(model, "guided_grad_cam"), layer, attribute_to_layer_input
    )
    cam = grad_cam(
        model,
        x,
        layer,
        target=target,
        relu_attributions=True,
        attribute_to_layer_input=attribute_to_layer_input,
        channel_axis=channel_axis,
        args=args,
        kwargs=kwargs,
        params=params,
    )
    gb = guided_backprop(model, x, target=target, args=args, kwargs=kwargs, params=params)

    def times_cam(g):
        axis = channel_axis % g.ndim
        size = [g.shape[i] for i in range(1, g.ndim) if i != axis]
        return g * interpolate(cam, size, mode=interpolate_mode, channel_axis=channel_axis)

    return jax.tree_util.tree_map(times_cam, gb)
