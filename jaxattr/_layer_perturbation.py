"""Layer perturbation methods: ablate or permute a named layer's activations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core, _taps
from jaxattr._core import PyTree
from jaxattr._layer import Setup, _activation_core, _batch

__all__ = [
    "layer_feature_ablation",
    "layer_feature_permutation",
]

Model = Any


# --------------------------------------------------------------------------------------
# Layer feature ablation
# --------------------------------------------------------------------------------------


@_core.cached_jit(("model", "inputs", "taps"))
def _ablation_chunk(
    *, model, inputs, taps, params, x, args, kwargs, target, masks, baselines, groups
):
    """Per tap (per tensor of a tuple layer), the drops of the groups of ``groups``.

    A group id is ablated in every tensor whose mask holds it, in one run (Captum's
    cross-tensor masks); the other tensors keep their values.
    """
    y, acts = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps)
    keys = [t.key for t in taps]
    base_score = _core.target_score(y, target)
    masks_b = [jnp.broadcast_to(m, acts[k].shape) for m, k in zip(masks, keys, strict=True)]
    bases_b = [
        jnp.broadcast_to(jnp.asarray(b, acts[k].dtype), acts[k].shape)
        for b, k in zip(baselines, keys, strict=True)
    ]

    def one(g):
        values = {
            k: jnp.where(m == g, b, acts[k]) for k, m, b in zip(keys, masks_b, bases_b, strict=True)
        }
        y_g, _ = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps, replace=values)
        drop = base_score - _core.target_score(y_g, target)
        return tuple(
            drop.reshape((-1,) + (1,) * (m.ndim - 1)) * (m == g).astype(drop.dtype) for m in masks_b
        )

    per_group = jax.vmap(one)(groups)
    return tuple(
        jnp.sum(a, axis=0).astype(acts[k].dtype) for a, k in zip(per_group, keys, strict=True)
    )


def _layer_mask(mask, act_shape):
    """A user's ``layer_mask`` for one tensor, checked, as a NumPy integer array."""
    try:
        ok = np.broadcast_shapes(tuple(np.shape(mask)), act_shape) == act_shape
    except ValueError:
        ok = False
    if not ok or np.ndim(mask) != len(act_shape) or np.shape(mask)[0] not in (1, act_shape[0]):
        raise ValueError(
            f"layer_mask must broadcast to the layer's activation shape {act_shape} with a "
            f"leading dimension of 1 or N, got shape {tuple(np.shape(mask))}"
        )
    if not _core.is_concrete(mask):
        raise ValueError("layer_mask must be concrete (its group count sets the work)")
    mask_np = np.asarray(mask)
    if not np.issubdtype(mask_np.dtype, np.integer):
        raise TypeError(f"layer_mask must hold integer group ids, got dtype {mask_np.dtype}")
    return mask_np


def _per_tensor(value, n, name, what):
    """``value`` as one entry per tensor of a layer returning ``n`` tensors."""
    if n > 1 and not isinstance(value, (tuple, list)):
        return None
    single = lambda v: n == 1  # noqa: E731
    return _core.per_leaf(value, n, name, single=single, per=f"tensor of the layer ({what})")


@_core.contract
def layer_feature_ablation(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    layer_mask: Any = None,
    layer_baselines: Any = 0.0,
    attribute_to_layer_input: bool = False,
    batch_size: int | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Ablate groups of a layer's units and record the drop of the target output.

    Captum's ``LayerFeatureAblation``: every group of units given by ``layer_mask`` (by
    default each unit alone) is replaced by ``layer_baselines``; every unit of the group
    gets ``f(x) - f(x with the group ablated)``. All groups are one ``vmap``-ped batch
    (the layers before the tapped one run once), chunked by ``batch_size`` groups.

    For a layer returning a tuple of tensors (or, with ``attribute_to_layer_input``,
    receiving several), ``layer_mask`` and ``layer_baselines`` give one entry per tensor
    (a scalar baseline serves them all); as in Captum, a group id found in several
    tensors' masks ablates its units in all of them at once, and the default mask
    numbers the units of all the tensors consecutively (each unit alone).

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        target: What to explain (see :func:`jaxattr.select_target`).
        layer_mask: Integer group ids ``0 .. G-1`` broadcastable to the activation, with a
            leading dimension of 1 or N (Captum's convention); default: each unit alone.
            A tuple of such, one per tensor, for a layer returning a tuple.
        layer_baselines: Scalar or array broadcastable to the activation (a tuple, one
            per tensor, or a scalar for a layer returning a tuple).
        attribute_to_layer_input: Ablate the layer's input instead of its output.
        batch_size: At most this many groups per compiled call.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        Shaped like the layer's activation; a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors
        (``layer_mask`` and ``layer_baselines`` then give one entry per tensor).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> mask = jnp.arange(32).reshape(1, 1, 1, 32)   # one group per channel
        >>> jaxattr.layer_feature_ablation(model, make_shapes(1)[0], "conv3", target=0,
        ...                                layer_mask=mask).shape
        (1, 8, 8, 32)
    """
    s = Setup(
        "layer_feature_ablation",
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    shapes = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    act_shapes = [tuple(shapes[t.key].shape) for t in s.taps]
    n = len(act_shapes)
    many = "receives" if attribute_to_layer_input else "returns a tuple of"
    if layer_mask is None:  # each unit alone, numbered across the tensors
        masks, offset = [], 0
        for shape in act_shapes:
            size = int(np.prod(shape[1:]))
            masks.append(offset + np.arange(size).reshape((1, *shape[1:])))
            offset += size
    else:
        given = _per_tensor(layer_mask, n, "layer_mask", "mask")
        if given is None:  # Captum would ablate the first tensor only: refuse
            raise ValueError(
                f"layer {layer!r} {many} {n} tensors of shapes {act_shapes}: "
                f"layer_mask must be a tuple of {n} masks, one per tensor"
            )
        masks = [_layer_mask(m, sh) for m, sh in zip(given, act_shapes, strict=True)]
    bases = _per_tensor(layer_baselines, n, "layer_baselines", "baseline")
    if bases is None:
        if np.ndim(layer_baselines) != 0:
            raise ValueError(
                f"layer {layer!r} {many} {n} tensors of shapes {act_shapes}: "
                f"layer_baselines must be a scalar or a tuple of {n}, one per tensor"
            )
        bases = [layer_baselines] * n
    groups = np.unique(np.concatenate([m.ravel() for m in masks])).astype(np.int32)
    total = None
    for start, stop in _core.batched_chunks(len(groups), _batch(batch_size)):
        part = _ablation_chunk(
            **s.common(),
            target=s.target,
            masks=tuple(m.astype(np.int32) for m in masks),
            baselines=tuple(jnp.asarray(b) for b in bases),
            groups=groups[start:stop],
        )
        total = _core.tree_add(total, part)
    return s.out(total)


@_caching.model_pytree(
    ["model", "params"], static=["taps", "inputs", "treedef", "n_args", "kw_names"]
)
class _LayerReplaced:
    """``fn(*activations, *x_leaves, *args, *kw_values)``: the model with the tapped
    layer's activations replaced by the given ones (the layers after it run on them)."""

    def __init__(self, model, params, taps, inputs, treedef, n_args, kw_names):
        self.model = model
        self.params = params  # a pytree child: the weights stay arguments of the program
        self.taps = taps
        self.inputs = inputs
        self.treedef = treedef
        self.n_args = n_args
        self.kw_names = kw_names

    def __call__(self, *a: Any) -> Any:
        k = len(self.taps)
        acts, rest = a[:k], a[k:]
        n_leaves = self.treedef.num_leaves
        x = jax.tree_util.tree_unflatten(self.treedef, rest[:n_leaves])
        rest = rest[n_leaves:]
        args, kw_values = rest[: self.n_args], rest[self.n_args :]
        y, _ = _taps.run_tapped(
            self.model,
            self.params,
            self.inputs,
            x,
            tuple(args),
            dict(zip(self.kw_names, kw_values, strict=True)),
            self.taps,
            replace={t.key: v for t, v in zip(self.taps, acts, strict=True)},
        )
        return y


@_core.contract
def layer_feature_permutation(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    layer_mask: Any = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Permutation importance of a layer's units, Captum's ``LayerFeaturePermutation``.

    :func:`jaxattr.feature_permutation` applied to the layer's activation: each group of
    units (``layer_mask``; default each unit alone) is shuffled across the batch while
    the model input stays, and every unit of the group gets ``f(x) - f(x with the group
    permuted)``. The layers before the tapped one run once.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        key: PRNG key of the permutations (as :func:`jaxattr.feature_permutation`'s).
        target: What to explain (see :func:`jaxattr.select_target`).
        layer_mask: Integer group ids broadcastable to the activation, with a leading
            dimension of 1 or N (Captum's ``layer_mask``); a tuple, one per tensor, for a
            layer returning a tuple.
        batch_size: At most this many permutations per compiled call (Captum's
            ``perturbations_per_eval``).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with instead of the model's own (same structure).

    Returns:
        Shaped like the layer's activation (a tuple, one per tensor, for a layer returning
        a tuple).

    Example:
        >>> import jax, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.layer_feature_permutation(demo_model(), make_shapes(3)[0], "fc",
        ...                                   key=jax.random.key(0), target=0).shape
        (3, 4)
    """
    from jaxattr._ablation import feature_permutation

    s = Setup(
        "layer_feature_permutation",
        model,
        x,
        layer,
        target=None,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=False,
        need_target=False,
        tuple_ok=True,
    )
    if not s.single:
        raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}")
    values = _activation_core(**s.common())
    leaves, treedef = jax.tree_util.tree_flatten(s.x)
    fn = _LayerReplaced(s.model, s.params, s.taps, s.inputs, treedef, len(s.args), s.kw_names)
    attr = feature_permutation(
        fn,
        values[0] if len(values) == 1 else tuple(values),
        key=key,
        target=target,
        feature_mask=layer_mask,
        batch_size=batch_size,
        show_progress=show_progress,
        args=(*leaves, *s.args, *s.kw_values),
    )
    return attr
