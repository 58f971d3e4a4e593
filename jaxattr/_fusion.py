"""NoiseGrad / FusionGrad: noise on the model's parameters around any attribution method."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core
from jaxattr._core import PyTree
from jaxattr._noise import _join_static, _split_static

__all__ = ["fusion_grad", "fusion_grad_draws", "model_buffers"]


@dataclasses.dataclass(frozen=True)
class _ParamsLast:
    """``fn(params, *x, *args)`` seen as a batch-first model ``g(*x, *args, params)``.

    The noisy params then travel as the last of the method's ``args`` (traced, so the
    inner method compiles once), not as a closure.
    """

    fn: Callable[..., Any]

    def __call__(self, *xs_args_params):
        *rest, params = xs_args_params
        return self.fn(params, *rest)


def _noise(key, tree, mean, std, n):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, leaf in zip(keys, leaves, strict=False):
        leaf = jnp.asarray(leaf)
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32
        z = mean + std * jax.random.normal(k, (n, *leaf.shape), dtype)
        out.append(z.astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def fusion_grad_draws(
    key: jax.Array,
    params: PyTree,
    x: PyTree,
    *,
    mean: float,
    std: float,
    n: int,
    sg_mean: float,
    sg_std: float,
    m: int,
) -> tuple[PyTree, PyTree]:
    """The random draws of :func:`fusion_grad` for ``key``.

    Noise is drawn for every leaf of ``params``; :func:`fusion_grad` applies it to the
    perturbed leaves only (never to a bridged model's buffers).

    Args:
        key: The PRNG key (``fusion_grad`` passes the first half of its key's split).
        params: The parameter pytree.
        x: The input (array or pytree), shape (N, ...).
        mean: Mean of the parameter noise.
        std: Standard deviation of the parameter noise.
        n: Number of parameter draws.
        sg_mean: Mean of the input noise.
        sg_std: Standard deviation of the input noise.
        m: Number of input draws per parameter draw.

    Returns:
        ``(param_noise, input_noise)``: ``N(mean, std^2)`` draws with leaves of shape
        (n, *param.shape) and ``N(sg_mean, sg_std^2)`` draws with leaves of shape
        (n, m, *x_leaf.shape); how they are applied (added or multiplied) depends on
        ``additive_noise`` and ``sg_additive_noise``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> pn, xn = jaxattr.fusion_grad_draws(
        ...     jax.random.key(0), {"w": jnp.ones(3)}, jnp.ones((2, 4)),
        ...     mean=0.0, std=0.1, n=5, sg_mean=0.0, sg_std=0.2, m=3)
        >>> pn["w"].shape, xn.shape
        ((5, 3), (5, 3, 2, 4))
    """
    k_p, k_x = jax.random.split(key)
    param_noise = _noise(k_p, params, mean, std, n)
    x_noise = _noise(k_x, x, sg_mean, sg_std, n * m)
    x_noise = jax.tree_util.tree_map(lambda a: a.reshape(n, m, *a.shape[1:]), x_noise)
    return param_noise, x_noise


def _apply(base, noise, additive, mask=None):
    """``base`` with ``noise`` added or multiplied in; leaves where ``mask`` is False, and
    integer leaves, are kept."""
    leaves, treedef = jax.tree_util.tree_flatten(base)
    z_leaves = treedef.flatten_up_to(noise)
    mask = (True,) * len(leaves) if mask is None else mask
    out = []
    for b, z, on in zip(leaves, z_leaves, mask, strict=True):
        dtype = jnp.asarray(b).dtype
        if not on or not jnp.issubdtype(dtype, jnp.floating):
            out.append(b)  # buffers and integer leaves (e.g. step counters) are never perturbed
        else:
            out.append((b + z if additive else b * z).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


#: Local names of buffers in a bridged model's layers (BatchNorm running statistics).
_BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def _leaf_names(params: PyTree) -> list[str]:
    """A name per leaf: the key of a flat dict (a bridged model's ``state_dict`` name),
    else the leaf's path (``jax.tree_util.keystr``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    names = []
    for path, _leaf in flat:
        if len(path) == 1 and isinstance(path[0], jax.tree_util.DictKey):
            names.append(str(path[0].key))
        else:
            names.append(jax.tree_util.keystr(path))
    return names


def model_buffers(model: Any) -> frozenset[str]:
    """The keys of a bridged model's ``params`` that are buffers, not parameters.

    A model converted from torch (:func:`jaxattr.bridge.from_torch`) keeps its float
    buffers (BatchNorm running statistics) in ``params`` beside the parameters; its
    exported program's signature lists them. Without that (an ONNX model, or a copy
    rebuilt from the pytree), the layers' roles are read: ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` of any layer. Anything else (a Flax
    adapter, a plain dict) has none. Accepts the model or its bound ``model.fn``.

    Args:
        model: A bridged ``Converted`` model, its ``fn`` method, or any other object.

    Returns:
        The buffer keys of ``model.params`` (empty when none are known).

    Example:
        >>> import jaxattr
        >>> jaxattr.model_buffers(lambda p, x: x)
        frozenset()
    """
    owner = getattr(model, "__self__", model)
    names: set[str] = set()
    signature = getattr(getattr(owner, "exported", None), "graph_signature", None)
    if signature is not None and hasattr(signature, "buffers"):
        names.update(signature.buffers)
    layers = getattr(owner, "layers", None)
    if isinstance(layers, dict):
        for layer in layers.values():
            for local, key in dict(getattr(layer, "param_names", {}) or {}).items():
                if local in _BUFFER_NAMES:
                    names.add(key)
    params = getattr(owner, "params", None)
    if isinstance(params, dict):
        aliases = getattr(owner, "aliases", {}) or {}
        names = {aliases.get(n, n) for n in names} & set(params)
    return frozenset(names)


def _perturb_mask(params: PyTree, fn: Callable[..., Any], perturb: Any) -> tuple[bool, ...]:
    """Which leaves of ``params`` get noise (see ``fusion_grad``'s ``perturb``)."""
    names = _leaf_names(params)
    if perturb is None:
        buffers = model_buffers(fn)
        return tuple(name not in buffers for name in names)
    if callable(perturb):
        leaves = jax.tree_util.tree_leaves(params)
        return tuple(bool(perturb(name, leaf)) for name, leaf in zip(names, leaves, strict=True))
    try:
        flags = jax.tree_util.tree_structure(params).flatten_up_to(perturb)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"perturb must be None, a function (name, leaf) -> bool, or a pytree of bools "
            f"matching params ({jax.tree_util.tree_structure(params)}), got "
            f"{jax.tree_util.tree_structure(perturb)}"
        ) from err
    return tuple(bool(f) for f in flags)


@_core.cached_jit(
    (
        "fn",
        "method",
        "spec",
        "takes_key",
        "is_tuple",
        "additive_noise",
        "sg_additive_noise",
        "mask",
    )
)
def _fusion_chunk(
    *,
    fn,
    method,
    params,
    x,
    p_noise,
    x_noise,
    keys,
    dynamic,
    spec,
    takes_key,
    is_tuple,
    additive_noise,
    sg_additive_noise,
    mask,
):
    """Sum of ``method`` over a chunk of (parameter draw, input draw) pairs."""
    kwargs = _join_static(dynamic, spec)
    user_args = tuple(kwargs.pop("args", ()))
    model = _ParamsLast(fn)

    def one(pz, xz, k):
        p = _apply(params, pz, additive_noise, mask)
        xs = _apply(x, xz, sg_additive_noise)
        kw = dict(kwargs)
        if takes_key:
            kw["key"] = k
        return method(model, xs, args=(*user_args, p), **kw)

    attr = jax.vmap(one)(p_noise, x_noise, keys)
    return jax.tree_util.tree_map(lambda a: a.sum(0), attr)


def fusion_grad(
    method: Callable[..., Any],
    *,
    mean: float = 0.0,
    std: float = 0.02,
    n: int = 10,
    additive_noise: bool = True,
    sg_mean: float = 0.0,
    sg_std: float = 0.1,
    m: int = 10,
    sg_additive_noise: bool = False,
    batch_size: int | None = None,
) -> Callable[..., Any]:
    """Wrap any attribution method in FusionGrad / NoiseGrad (Bykov et al., 2022).

    The returned method explains a model ``fn(params, x)`` (``fn(params, *x)`` for a tuple
    ``x``) by averaging ``method`` over ``n`` noisy copies of the parameters pytree and,
    for each, ``m`` noisy copies of the input: ``n * m`` attributions, one ``vmap``-ped
    batch (``batch_size`` pairs per compiled call). Parameter noise is ``N(mean, std^2)``,
    added (``additive_noise=True``) or multiplied (``False``; use ``mean=1``); input noise
    is ``N(sg_mean, sg_std^2)``, added or multiplied likewise (``sg_additive_noise``).
    The defaults are extra-attributions' ``FusionGrad`` defaults. ``m=1, sg_std=0,
    sg_additive_noise=True`` is NoiseGrad (parameter noise only).

    Only *parameters* are perturbed, as the reference perturbs ``model.parameters()``:
    for a bridged model (``fn`` is ``converted.fn``) its buffers (BatchNorm running
    statistics, :func:`model_buffers`) are kept; integer leaves are always kept; the
    call's ``perturb=`` chooses the leaves for any other pytree.

    Note that with the defaults the input noise is *multiplicative* with mean 0 (the
    input is scaled by ``N(0, 0.01)``); for SmoothGrad-like input noise pass
    ``sg_additive_noise=True`` (or ``sg_mean=1`` with multiplicative noise).

    Args:
        method: A jaxattr method ``method(fn, x, **kwargs)``.
        mean: Mean of the parameter noise.
        std: Standard deviation of the parameter noise.
        n: Number of parameter draws.
        additive_noise: Add the parameter noise (else multiply).
        sg_mean: Mean of the input noise.
        sg_std: Standard deviation of the input noise.
        m: Number of input draws per parameter draw.
        sg_additive_noise: Add the input noise (else multiply).
        batch_size: At most this many (parameter, input) pairs per compiled call.

    Returns:
        A method ``fused(fn, params, x, *, key, perturb=None, **kwargs)``; ``key`` seeds
        the draws (:func:`fusion_grad_draws`); ``perturb`` picks the leaves of ``params``
        that get noise: ``None`` (every float leaf except a bridged model's buffers), a
        function ``(name, leaf) -> bool`` (``name``: the key of a flat dict, else the
        leaf's path) or a pytree of bools like ``params``. Other keywords (``target``,
        ``args``, ...) go to ``method``. It returns the mean attribution, with x's
        structure.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fg = jaxattr.fusion_grad(jaxattr.saliency, n=3, m=2, sg_additive_noise=True)
        >>> fn = lambda w, x: x @ w
        >>> fg(fn, jnp.ones((3, 2)), jnp.ones((4, 3)), key=jax.random.key(0), target=1).shape
        (4, 3)
    """
    if not callable(method):
        raise TypeError(f"method must be a jaxattr method, got {type(method).__name__}")
    n = _core.check_positive_int(n, "n")
    m = _core.check_positive_int(m, "m")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    for name, value in (("mean", mean), ("std", std), ("sg_mean", sg_mean), ("sg_std", sg_std)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{name} must be a float, got {value!r}")
    if std < 0 or sg_std < 0:
        raise ValueError(f"std and sg_std must be >= 0, got std={std}, sg_std={sg_std}")
    try:
        takes_key = "key" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_key = False

    @_core.contract
    def fused(
        fn: Callable[..., Any],
        params: PyTree,
        x: PyTree,
        *,
        key: jax.Array | None = None,
        perturb: Any = None,
        **kwargs: Any,
    ) -> PyTree:
        key = _core.check_key(key, "fusion_grad")
        x = _core.to_arrays(x)
        params = _core.to_arrays(params)
        mask = _perturb_mask(params, fn, perturb)
        inputs = _core.as_inputs(x)
        model = _ParamsLast(fn)
        user_args = tuple(kwargs.get("args", ()))
        if "target" in kwargs:  # validate eagerly, with the full error message
            _core.prepare_target(kwargs["target"], model, inputs, x, (*user_args, params))
        k_draw, k_method = jax.random.split(key)
        p_noise, x_noise = fusion_grad_draws(
            k_draw, params, x, mean=mean, std=std, n=n, sg_mean=sg_mean, sg_std=sg_std, m=m
        )
        # flatten the (n, m) pairs: parameter draw i repeated for its m input draws
        p_noise = jax.tree_util.tree_map(lambda a: jnp.repeat(a, m, axis=0), p_noise)
        x_noise = jax.tree_util.tree_map(lambda a: a.reshape(n * m, *a.shape[2:]), x_noise)
        keys = jax.random.split(k_method, n * m)
        kwargs = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
        dynamic, spec = _split_static(kwargs)
        total = None
        for start, stop in _core.batched_chunks(n * m, batch_size):
            part = jax.tree_util.tree_map(lambda a, lo=start, hi=stop: a[lo:hi], (p_noise, x_noise))
            total = _core.tree_add(
                total,
                _fusion_chunk(
                    fn=fn,
                    method=method,
                    params=params,
                    x=x,
                    p_noise=part[0],
                    x_noise=part[1],
                    keys=keys[start:stop],
                    dynamic=dynamic,
                    spec=spec,
                    takes_key=takes_key,
                    is_tuple=inputs.is_tuple,
                    additive_noise=bool(additive_noise),
                    sg_additive_noise=bool(sg_additive_noise),
                    mask=mask,
                ),
            )
        return _core.cast_like(jax.tree_util.tree_map(lambda a: a / (n * m), total), x)

    fused.__name__ = f"fusion_grad({getattr(method, '__name__', 'method')})"
    fused.__doc__ = (
        f"``{getattr(method, '__name__', 'method')}`` under FusionGrad (n={n}, m={m}, "
        f"std={std}, sg_std={sg_std})."
    )
    return fused
