"""Randomisation and axiomatic metrics of Quantus 0.6.0 in JAX: model parameter
randomisation (cascading and independent), random logit, non-sensitivity and input
invariance. (Completeness is :func:`jaxattr.completeness`.)

Models with parameters are given as ``apply_fn(params, x)`` and a params pytree, so a
randomised model is new parameters, not a mutated module: the explanations of all
randomised models run through one compiled program (the parameters are traced
arguments), ``batch_size`` of them per ``vmap``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core
from jaxattr import _quantus_common as qc
from jaxattr._fusion import _ParamsLast
from jaxattr._noise import _join_static, _split_static
from jaxattr._quantus_faithfulness import _ranked
from jaxattr._quantus_robustness import (
    _agg,
    _explain_reference,
    _post,
    _prepare_method,
    _processed,
)

__all__ = [
    "input_invariance",
    "model_parameter_randomisation",
    "non_sensitivity",
    "random_logit",
    "randomise_uniform",
]


# --------------------------------------------------------------------------------------
# Model parameter randomisation
# --------------------------------------------------------------------------------------


def _has_arrays(tree: Any) -> bool:
    return any(hasattr(leaf, "shape") for leaf in jax.tree_util.tree_leaves(tree))


def _layer_paths(params: Any) -> list[tuple]:
    """The default layers: the entries of the params' top level (below a lone
    ``"params"`` key, Flax's collection), in order."""
    prefix: tuple = ()
    tree = params
    while isinstance(tree, Mapping) and list(tree) == ["params"]:
        prefix += ("params",)
        tree = tree["params"]
    if isinstance(tree, Mapping):
        keys = list(tree)
    elif isinstance(tree, (list, tuple)):
        keys = list(range(len(tree)))
    else:
        raise ValueError(
            "params must be a dict (or list) of layers to find the layers; pass layers= "
            f"(paths into params) for a {type(params).__name__}"
        )
    return [prefix + (k,) for k in keys if _has_arrays(tree[k])]


def _get(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, Mapping):
        out = dict(tree)
        out[head] = _set(tree[head], rest, value)
        return type(tree)(out) if type(tree) is not dict else out
    if isinstance(tree, (list, tuple)):
        out = list(tree)
        out[head] = _set(tree[head], rest, value)
        return type(tree)(out)
    raise ValueError(f"cannot index {type(tree).__name__} with {head!r}")


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def randomise_uniform(key: jax.Array, name: str, layer: Any) -> Any:
    """The default re-initialisation of :func:`model_parameter_randomisation`.

    Every array of the layer is redrawn from ``U(-b, b)`` with ``b = sqrt(3) * std`` of
    that array (same spread as before; torch's default ``reset_parameters`` draws from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, which has this form). An array with zero spread
    (a zero bias, a scalar) uses the spread of all of the layer's values, or 1 if all are
    equal.

    Args:
        key: PRNG key.
        name: The layer's name (unused; custom functions may use it).
        layer: The layer's params pytree.

    Returns:
        New params with the layer's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxattr.metrics import randomise_uniform
        >>> new = randomise_uniform(jax.random.key(0), "fc", {"w": jnp.ones((3, 2)),
        ...                                                   "b": jnp.zeros(2)})
        >>> new["w"].shape, bool(jnp.all(jnp.abs(new["w"]) <= jnp.sqrt(3.0)))
        ((3, 2), True)
    """
    leaves, treedef = jax.tree_util.tree_flatten(layer)
    floats = [
        jnp.asarray(v).reshape(-1)
        for v in leaves
        if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)
    ]
    pooled = jnp.std(jnp.concatenate(floats)) if floats else jnp.asarray(1.0)
    pooled = jnp.where(pooled > 0, pooled, 1.0)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, v in zip(keys, leaves, strict=False):
        v = jnp.asarray(v)
        if not jnp.issubdtype(v.dtype, jnp.floating):
            out.append(v)
            continue
        std = jnp.std(v) if v.size > 1 else jnp.asarray(0.0, v.dtype)
        b = jnp.sqrt(3.0) * jnp.where(std > 0, std, pooled)
        out.append(qc.uniform(k, v.shape, v.dtype, -1.0, 1.0) * b.astype(v.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


@_core.cached_jit(("apply_fn", "method", "spec", "takes_key", "post"))
def _mprt_chunk(*, apply_fn, method, spec, takes_key, post, stacked, x, key, dynamic):
    kwargs = _join_static(dynamic, spec)
    user_args = tuple(kwargs.pop("args", ()))
    model = _ParamsLast(apply_fn)

    def one(p):
        kw = dict(kwargs, key=key) if takes_key else kwargs
        e = method(model, x, args=(*user_args, p), **kw)
        return qc.apply_post(qc.expand_attributions(e, x), post)

    return jax.vmap(one)(stacked)


def _stack(trees: list) -> Any:
    return jax.tree_util.tree_map(lambda *v: jnp.stack(v), *trees)


def model_parameter_randomisation(
    method: Callable[..., Any],
    apply_fn: Callable[..., Any],
    params: Any,
    x: jax.Array,
    attributions: jax.Array | None = None,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    layer_order: str = "top_down",
    layers: list | None = None,
    randomise_func: Callable[..., Any] | None = None,
    similarity_func: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    return_average_correlation: bool = False,
    return_last_correlation: bool = False,
    skip_layers: bool = False,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    method_kwargs: dict | None = None,
    batch_size: int | None = None,
    check_finite: bool = True,
) -> dict[str, jax.Array] | jax.Array:
    """Model parameter randomisation test (Adebayo et al., 2018), Quantus's ``MPRT``.

    The layers' parameters are re-initialised one after another and the explanation of
    each randomised model is compared with the original one (``similarity_func``, Spearman
    by default, on the flattened attributions after ``normalise`` and ``abs``); an
    explanation that depends on the model keeps a low similarity. ``layer_order``:
    ``"top_down"`` (cascading from the output layer, Quantus's default), ``"bottom_up"``
    (cascading from the input) or ``"independent"`` (one layer at a time, in forward order).

    The model is ``apply_fn(params, x)``. Layers are ``layers`` (paths into ``params``:
    keys, or tuples of keys for nested dicts) or, by default, the top-level entries of
    ``params`` (below a lone Flax ``"params"`` key) in forward order. Each layer is
    re-initialised by ``randomise_func(key, name, layer_params)`` (default
    :func:`randomise_uniform`) with ``jax.random.fold_in(key, i)`` for the ``i``-th layer
    of the forward order (Quantus re-seeds torch with ``seed + 1`` before each layer and
    calls the module's ``reset_parameters``; pass a function returning given weights to
    reproduce a torch run, as the tests do). ``seed`` becomes ``key``.

    Differs from Quantus: ``return_average_correlation`` averages the layers only (Quantus
    means to skip ``"original"`` but compares with the key ``"orig"``, so its average
    includes the original model's similarity).

    Args:
        method: A jaxattr method, called ``method(model, x, target=target, ...)``.
        apply_fn: ``apply_fn(params, x) -> (N, classes)``.
        params: The model's parameters (a pytree).
        x: Input (N, ...).
        attributions: The explanation of x by the original model; computed when None.
        target: Passed to ``method``.
        key: PRNG key of the re-initialisations.
        layer_order: ``"top_down"``, ``"bottom_up"`` or ``"independent"``.
        layers: The layers as paths into ``params``, in forward order.
        randomise_func: ``(key, name, layer_params) -> new layer_params``.
        similarity_func: ``(a, b) -> (N,)`` on flattened attributions; default Spearman.
        return_average_correlation: Return the mean over layers per example.
        return_last_correlation: Return the last layer's similarity per example.
        skip_layers: Evaluate only the fully randomised model (with "original").
        abs: Absolute attributions (Quantus's default True).
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Aggregate (needs one of the two ``return_*_correlation``).
        aggregate_func: Default the mean.
        method_kwargs: Further keyword arguments of ``method``.
        batch_size: Randomised models explained per compiled call (default 1).
        check_finite: Reject NaN/Inf in ``x`` with a named error before anything runs
            (default); ``False`` evaluates anyway.

    Returns:
        A dict ``{"original": (N,), layer name: (N,), ...}`` in evaluation order, or (N,)
        per-example scores with ``return_average_correlation`` /
        ``return_last_correlation``, or their aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> def apply_fn(p, x):
        ...     return jnp.tanh(x @ p["dense1"]["w"]) @ p["dense2"]["w"]
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> params = {"dense1": {"w": jax.random.normal(k1, (6, 8))},
        ...           "dense2": {"w": jax.random.normal(k2, (8, 3))}}
        >>> x = jax.random.normal(jax.random.key(1), (4, 6))
        >>> out = metrics.model_parameter_randomisation(
        ...     jaxattr.gradient, apply_fn, params, x, target=0, key=jax.random.key(2))
        >>> list(out), out["original"].round(3)
        (['original', 'dense2', 'dense1'], Array([1., 1., 1., 1.], dtype=float32))
    """
    if not callable(apply_fn):
        raise TypeError(
            f"apply_fn must be callable (params, x) -> y, got {type(apply_fn).__name__}"
        )
    x = qc.as_x(x, check=qc.check_bool(check_finite, "check_finite"))
    order = _core.check_choice(layer_order, "layer_order", ("top_down", "bottom_up", "independent"))
    avg = qc.check_bool(return_average_correlation, "return_average_correlation")
    last = qc.check_bool(return_last_correlation, "return_last_correlation")
    skip = qc.check_bool(skip_layers, "skip_layers")
    if avg and last:
        raise ValueError(
            "return_average_correlation and return_last_correlation cannot both be True"
        )
    if avg and skip:
        raise ValueError("return_average_correlation needs every layer: skip_layers must be False")
    if return_aggregate and not (avg or last):
        raise ValueError(
            "return_aggregate needs return_average_correlation or return_last_correlation"
        )
    if randomise_func is not None and not callable(randomise_func):
        raise TypeError("randomise_func must be callable (key, name, layer_params) -> params")
    randomise = randomise_uniform if randomise_func is None else randomise_func
    key = _core.check_key(key, "model_parameter_randomisation")
    chunk = 1 if batch_size is None else _core.check_positive_int(batch_size, "batch_size")
    paths = (
        _layer_paths(params)
        if layers is None
        else [p if isinstance(p, tuple) else (p,) for p in layers]
    )
    if not paths:
        raise ValueError("params has no layers with arrays to randomise")
    for p in paths:
        try:
            _get(params, p)
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"layers: {p!r} is not a path into params") from err
    post = _post(abs, normalise, normalise_func)
    kwargs, takes_key = _prepare_method(method, apply_fn, x, target, method_kwargs)
    k_method = jax.random.fold_in(key, len(paths))
    original_fn = _ParamsLast(apply_fn)
    base_kwargs = dict(kwargs)
    user_args = tuple(base_kwargs.pop("args", ()))
    a_orig = _explain_reference(
        lambda f, z, **kw: method(f, z, args=(*user_args, params), **kw),
        original_fn,
        x,
        base_kwargs,
        takes_key,
        k_method,
        post,
    )
    a = a_orig if attributions is None else _processed(attributions, x, post)
    sim_fn = qc.correlation_spearman if similarity_func is None else similarity_func
    index = {p: i for i, p in enumerate(paths)}
    sequence = paths[::-1] if order == "top_down" else list(paths)
    models, names, current = [], [], params
    for p in sequence:
        new_layer = randomise(jax.random.fold_in(key, index[p]), _name(p), _get(params, p))
        base = params if order == "independent" else current
        current = _set(base, p, new_layer)
        models.append(current)
        names.append(_name(p))
    if skip:
        models, names = models[-1:], names[-1:]
    dynamic, spec = _split_static(kwargs)
    explanations = []
    for start in range(0, len(models), chunk):
        explanations.append(
            _mprt_chunk(
                apply_fn=apply_fn,
                method=method,
                spec=spec,
                takes_key=takes_key,
                post=post,
                stacked=_stack(models[start : start + chunk]),
                x=x,
                key=k_method,
                dynamic=dynamic,
            )
        )
    sims = _mprt_similarities(a, a_orig, explanations, sim=sim_fn)  # (1 + L, N)
    scores = {"original": sims[0]}
    scores.update({name: sims[1 + i] for i, name in enumerate(names)})
    if avg:
        result = jnp.mean(sims[1:], axis=0)
    elif last:
        result = sims[-1]
    else:
        return scores
    agg = _agg(return_aggregate, aggregate_func)
    return result if agg is None else agg(result)


@functools.partial(_caching.jit, static_argnames=("sim",))
def _mprt_similarities(a, a_orig, explanations, *, sim):
    n = a.shape[0]
    expl = jnp.concatenate([a_orig[None]] + list(explanations), axis=0)
    return jax.vmap(lambda e: sim(a.reshape(n, -1), e.reshape(n, -1)))(expl)


# --------------------------------------------------------------------------------------
# Random logit
# --------------------------------------------------------------------------------------


@_core.contract
def random_logit(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array | None = None,
    *,
    target: Any,
    key: jax.Array | None = None,
    num_classes: int | None = None,
    similarity_func: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    method_kwargs: dict | None = None,
) -> jax.Array:
    """Random logit test (Sixt et al., 2020), Quantus's ``RandomLogit``.

    The explanation of the label ``target`` is compared (``similarity_func``, by default
    :func:`ssim` on the flattened attributions) with the explanation of another class
    drawn uniformly from the other ``num_classes - 1``. A class-sensitive explanation
    scores low.

    The other class of example ``i`` is the ``j``-th smallest class other than its label,
    ``j = jax.random.randint(k, (N,), 0, num_classes - 1)[i]`` with ``k`` the first of
    ``jax.random.split(key, 3)`` (Quantus draws ``j`` with
    ``np.random.randint`` after seeding with ``seed``). ``num_classes`` defaults to the
    model's output size (Quantus's default is 1000).

    Args:
        method: A jaxattr method, called ``method(fn, x, target=..., **method_kwargs)``.
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: The explanation of ``target``; computed with ``method`` when None.
        target: Class labels: an int or N ints.
        key: PRNG key for the other classes.
        num_classes: Number of classes (default: ``fn``'s output size).
        similarity_func: ``(a, b) -> (N,)``; default :func:`ssim`.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        method_kwargs: Further keyword arguments of ``method``.

    Returns:
        The similarity per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> w = jax.random.normal(jax.random.key(0), (16, 3))
        >>> fn = lambda x: x @ w
        >>> x = jnp.ones((2, 16))
        >>> metrics.random_logit(jaxattr.gradient, fn, x, target=0,
        ...                      key=jax.random.key(1)).shape
        (2,)
    """
    x = qc.as_x(x)
    n = x.shape[0]
    labels = qc.labels(target, n)
    out_shape = jax.eval_shape(fn, x).shape
    k = (
        out_shape[-1]
        if num_classes is None
        else _core.check_positive_int(num_classes, "num_classes", minimum=2)
    )
    if k < 2:
        raise ValueError(f"random_logit needs at least 2 classes, fn returns {out_shape}")
    key = _core.check_key(key, "random_logit")
    post = _post(abs, normalise, normalise_func)
    kwargs, takes_key = _prepare_method(method, fn, x, None, method_kwargs)
    k_class, k_method, k_off = _other_class_keys(key)
    if attributions is None:
        a = _explain_reference(
            method, fn, x, dict(kwargs, target=labels), takes_key, k_method, post
        )
    else:
        a = _processed(attributions, x, post)
    off = _other_class(k_class, labels, k=k)
    a_off = _explain_reference(method, fn, x, dict(kwargs, target=off), takes_key, k_off, post)
    return _similarity(
        a,
        a_off,
        sim=qc.ssim if similarity_func is None else similarity_func,
        agg=_agg(return_aggregate, aggregate_func),
    )


# --------------------------------------------------------------------------------------
# Axiomatic: non-sensitivity, input invariance
# --------------------------------------------------------------------------------------


@_core.contract
def non_sensitivity(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    eps: float = 1e-5,
    features_in_step: int = 1,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Non-sensitivity (Nguyen & Martinez, 2020), Quantus's ``NonSensitivity``.

    Features are replaced by the baseline ``features_in_step`` at a time, in index order,
    each group alone. A group is a "non-feature" when its attributions are below ``eps``;
    the model is insensitive to it when the explained output moves by less than ``eps``.
    The score counts the groups where the two disagree (lower is better).

    For ``features_in_step=1`` this is Quantus's count exactly. Quantus compares an
    (N, groups) array with an (N, features) one and fails for larger steps; jaxattr calls
    a group a non-feature when all of its attributions are below ``eps``.

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``"uniform"`` or a random ``perturb_func``.
        eps: Threshold for attributions and output changes.
        features_in_step: Features per group.
        perturb_baseline: ``"black"``, ``"white"``, ``"mean"``, ``"uniform"`` or a number.
        perturb_func: ``(key, x, mask) -> x_perturbed``.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        abs: Absolute attributions (Quantus's default True).
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many groups per compiled call.

    Returns:
        The count per example (N,) (int32), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x[:, 0] + x[:, 1], x[:, 2]], 1)   # ignores x[:, 3]
        >>> x = jnp.ones((1, 4))
        >>> a = jnp.array([[1.0, 1.0, 0.0, 0.0]])      # misses feature 2
        >>> metrics.non_sensitivity(fn, x, a, target=0, perturb_baseline=0.0,
        ...                         softmax=False)
        Array([0], dtype=int32)
    """
    return _ranked(
        fn,
        x,
        attributions,
        target=target,
        key=key,
        name="non_sensitivity",
        order="index",
        features_in_step=features_in_step,
        perturb_baseline=perturb_baseline,
        perturb_func=perturb_func,
        perturb_func_kwargs=perturb_func_kwargs,
        mode="single",
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        softmax=softmax,
        batch_size=batch_size,
        finish="non_sensitivity",
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
        eps=qc.check_number(eps, "eps", minimum=0.0),
    )


@_core.contract
def input_invariance(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array | None = None,
    *,
    target: Any = None,
    input_shift: float = -1,
    shifted_fn: Callable[..., Any] | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    method_kwargs: dict | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Input invariance (Kindermans et al., 2017), Quantus's ``InputInvariance``.

    The input is shifted by the constant ``input_shift`` and the model compensates exactly
    (its first layer's bias absorbs the shift), so model and prediction are unchanged; an
    input-invariant explanation is unchanged too. True per example when every attribution
    of the shifted pair is within ``numpy.isclose`` (``atol=1e-4``, ``rtol=1e-5``) of the
    original.

    The compensated model defaults to ``shifted_fn = lambda z: fn(z - input_shift)``, which
    is what Quantus builds by adjusting the first layer's bias of a torch model (exactly so
    when that layer is a convolution without zero padding or a linear layer); pass your own
    ``shifted_fn`` for another construction.

    Args:
        method: A jaxattr method, called ``method(fn, x, target=target, **method_kwargs)``.
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: The explanation of x; computed with ``method`` when None.
        target: Passed to ``method``.
        input_shift: The constant added to every input feature.
        shifted_fn: The model for shifted inputs.
        abs: Absolute attributions (Quantus warns against it here).
        normalise: Apply ``normalise_func`` (Quantus warns against it here).
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        method_kwargs: Further keyword arguments of ``method``.
        key: PRNG key for a random ``method``.

    Returns:
        Boolean per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> w = jax.random.normal(jax.random.key(0), (5, 3))
        >>> fn = lambda x: jnp.tanh(x @ w)
        >>> x = jax.random.normal(jax.random.key(1), (2, 5))
        >>> metrics.input_invariance(jaxattr.gradient, fn, x, target=0)
        Array([ True,  True], dtype=bool)
        >>> metrics.input_invariance(jaxattr.input_x_gradient, fn, x, target=0)
        Array([False, False], dtype=bool)
    """
    x = qc.as_x(x)
    shift = qc.check_number(input_shift, "input_shift")
    if shifted_fn is None:
        shifted = _Shifted(fn, shift)
    elif callable(shifted_fn):
        shifted = shifted_fn
    else:
        raise TypeError(f"shifted_fn must be callable, got {type(shifted_fn).__name__}")
    post = _post(abs, normalise, normalise_func)
    kwargs, takes_key = _prepare_method(method, fn, x, target, method_kwargs)
    key = (
        _core.check_key(key, "input_invariance")
        if takes_key
        else (jax.random.key(0) if key is None else key)
    )
    if attributions is None:
        a = _explain_reference(method, fn, x, kwargs, takes_key, key, post)
    else:
        a = _processed(attributions, x, post)
    a_shift = _explain_reference(method, shifted, _shift(x, shift), kwargs, takes_key, key, post)
    return _invariant(a, a_shift, agg=_agg(return_aggregate, aggregate_func))


@_caching.jit
def _other_class_keys(key):
    return jax.random.split(key, 3)


@functools.partial(_caching.jit, static_argnames=("k",))
def _other_class(key, labels, *, k):
    j = jax.random.randint(key, labels.shape, 0, k - 1)
    return j + (j >= labels).astype(j.dtype)


@functools.partial(_caching.jit, static_argnames=("sim", "agg"))
def _similarity(a, b, *, sim, agg):
    n = a.shape[0]
    result = sim(a.reshape(n, -1), b.reshape(n, -1))
    return result if agg is None else agg(result)


@_caching.jit
def _shift(x, shift):
    return x + shift


@functools.partial(_caching.jit, static_argnames=("agg",))
def _invariant(a, b, *, agg):
    close = jnp.isclose(a, b, rtol=1e-5, atol=1e-4)
    result = jnp.all(close.reshape(a.shape[0], -1), axis=1)
    return result if agg is None else agg(result)


class _Shifted:
    """``fn(z - shift)``: the model compensating a constant input shift (hashable)."""

    def __init__(self, fn: Callable[..., Any], shift: float) -> None:
        self.fn, self.shift = fn, shift

    def __call__(self, z, *args):
        return self.fn(z - self.shift, *args)

    def __hash__(self) -> int:
        return hash((self.fn, self.shift))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Shifted) and (self.fn, self.shift) == (other.fn, other.shift)
