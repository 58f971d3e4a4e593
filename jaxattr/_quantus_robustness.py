"""Robustness metrics of Quantus 0.6.0 in JAX: local Lipschitz estimate, max- and
avg-sensitivity, continuity.

Each metric explains perturbed copies of the input with a jaxattr ``method``
(``method(fn, x, target=target, **method_kwargs)``, Quantus's ``explain_func``); all the
copies are one ``vmap``-ped, jitted batch (``batch_size`` splits it), and the noise comes
from an explicit ``key``. A ``method`` that takes a ``key`` (a noise tunnel, say) gets a
fresh one for every explanation. Explanations of perturbed inputs are post-processed like
the reference attributions (``normalise``, then ``abs``), as Quantus does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core
from jaxattr import _quantus_common as qc
from jaxattr._noise import _join_static, _split_static

__all__ = [
    "avg_sensitivity",
    "continuity",
    "lipschitz_constant",
    "local_lipschitz_estimate",
    "max_sensitivity",
]


def lipschitz_constant(
    a: jax.Array,
    b: jax.Array,
    c: jax.Array,
    d: jax.Array,
    *,
    norm_numerator: Callable[..., jax.Array] = qc.distance_manhattan,
    norm_denominator: Callable[..., jax.Array] = qc.distance_euclidean,
) -> jax.Array:
    """Quantus's ``lipschitz_constant``: ``norm_numerator(a, b) / (norm_denominator(c, d) +
    1e-10)``.

    Args:
        a: Attributions (N, K).
        b: Attributions of the perturbed inputs (N, K).
        c: Inputs (N, M).
        d: Perturbed inputs (N, M).
        norm_numerator: Distance of attribution rows, (N, K) x 2 -> (N,).
        norm_denominator: Distance of input rows.

    Returns:
        The ratio per row, shape (N,).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import lipschitz_constant
        >>> lipschitz_constant(jnp.array([[0.0, 2.0]]), jnp.array([[1.0, 0.0]]),
        ...                    jnp.array([[0.0]]), jnp.array([[3.0]]))
        Array([1.], dtype=float32)
    """
    return norm_numerator(a, b) / (norm_denominator(c, d) + 1e-10)


def _takes_key(method: Callable[..., Any]) -> bool:
    try:
        return "key" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _method_call(method, fn, x, kwargs, takes_key, key):
    kw = dict(kwargs, key=key) if takes_key else kwargs
    return method(fn, x, **kw)


def _prepare_method(method, fn, x, target, method_kwargs):
    if not callable(method):
        raise TypeError(f"method must be a jaxattr method, got {type(method).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be a callable model, got {type(fn).__name__}")
    kwargs = dict(method_kwargs or {})
    if "target" in kwargs:
        raise ValueError("pass target as the metric's target=, not in method_kwargs")
    if target is not None:
        kwargs["target"] = np.asarray(target) if isinstance(target, list) else target
    kwargs = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    return kwargs, _takes_key(method)


@functools.partial(_caching.jit, static_argnames=("shape", "post"))
def _post_jit(a, *, shape, post):
    return qc.apply_post(a.reshape(shape), post)


def _explain_reference(method, fn, x, kwargs, takes_key, key, post):
    a = _method_call(method, fn, x, kwargs, takes_key, key)
    if not isinstance(a, (jax.Array, np.ndarray)):
        raise TypeError(
            f"method must return one array (the attribution of x), got {type(a).__name__}"
        )
    return _processed(a, x, post, "method's attribution")


def _processed(a, x, post, name="attributions"):
    a, shape = qc.as_attr(a, x, name)
    return _post_jit(a, shape=shape, post=post)


@functools.partial(_caching.jit, static_argnames=("return_nan", "reduce", "agg"))
def _reduce(sims, changed, *, return_nan, reduce, agg):
    sim = jnp.concatenate(sims, axis=0)  # (S, N)
    if reduce == "max_nan":  # continuity: NaN marks only with return_nan, then np.max
        if return_nan:
            sim = jnp.where(jnp.concatenate(changed, axis=0), jnp.nan, sim)
        result = jnp.max(sim, axis=0)
    elif return_nan:
        sim = jnp.where(jnp.concatenate(changed, axis=0), jnp.nan, sim)
        result = jnp.max(sim, axis=0) if reduce == "max" else jnp.mean(sim, axis=0)
    else:
        result = jnp.nanmax(sim, axis=0) if reduce == "max" else jnp.nanmean(sim, axis=0)
    return result if agg is None else agg(result)


def _agg(return_aggregate, aggregate_func):
    if not qc.check_bool(return_aggregate, "return_aggregate"):
        return None
    return jnp.mean if aggregate_func is None else aggregate_func


def _like(ap, xp, a):
    ap = qc.expand_attributions(ap, xp, "method's attribution of a perturbed input")
    if ap.shape != a.shape:
        raise ValueError(
            f"method's attributions of perturbed inputs have shape {tuple(ap.shape)}, the "
            f"reference attributions {tuple(a.shape)}: they must match"
        )
    return ap


def _post(abs, normalise, normalise_func):  # noqa: A002
    return qc.post_options(abs, normalise, normalise_func)


@_core.cached_jit(("fn", "method", "spec", "takes_key", "post", "noise", "perturb_func", "measure"))
def _robust_chunk(
    *,
    fn,
    method,
    spec,
    takes_key,
    post,
    noise,
    perturb_func,
    measure,
    x,
    a,
    keys,
    method_keys,
    dynamic,
    params,
):
    """Per sample: (similarity (N,), prediction changed (N,))."""
    kwargs = _join_static(dynamic, spec)
    n = x.shape[0]
    cls = jnp.argmax(fn(x), axis=-1)

    def one(k, mk):
        if perturb_func is not None:
            xp = perturb_func(k, x)
        elif noise == "gaussian":
            xp = x + (params[0] + params[1] * qc.normal(k, x.shape, x.dtype))
        elif noise == "uniform_symmetric":
            xp = x + qc.uniform(k, x.shape, x.dtype, -params[0], params[0])
        else:
            xp = x + qc.uniform(k, x.shape, x.dtype, params[0], params[1])
        changed = jnp.argmax(fn(xp), axis=-1) != cls
        ap = _method_call(method, fn, xp, kwargs, takes_key, mk)
        ap = qc.apply_post(_like(ap, xp, a), post)
        af, apf = a.reshape(n, -1), ap.reshape(n, -1)
        kind, num, den, sim = measure
        if kind == "lipschitz":
            if sim is None:
                value = lipschitz_constant(
                    af,
                    apf,
                    x.reshape(n, -1),
                    xp.reshape(n, -1),
                    norm_numerator=num,
                    norm_denominator=den,
                )
            else:
                value = sim(
                    a=af,
                    b=apf,
                    c=x.reshape(n, -1),
                    d=xp.reshape(n, -1),
                    norm_numerator=num,
                    norm_denominator=den,
                )
        else:
            diff = (af - apf) if sim is None else sim(af, apf)
            value = num(diff) / den(af)
        return value, changed

    return jax.vmap(one)(keys, method_keys)


def _robustness(
    method,
    fn,
    x,
    attributions,
    *,
    target,
    key,
    nr_samples,
    noise,
    params,
    perturb_func,
    measure,
    post,
    method_kwargs,
    return_nan,
    reduce,
    return_aggregate,
    aggregate_func,
    batch_size,
    name,
):
    x = qc.as_x(x)
    n_samples = _core.check_positive_int(nr_samples, "nr_samples")
    if perturb_func is not None and not callable(perturb_func):
        raise TypeError(
            f"perturb_func must be None or callable (key, x) -> x_perturbed, got "
            f"{type(perturb_func).__name__}"
        )
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    return_nan = qc.check_bool(return_nan, "return_nan_when_prediction_changes")
    key = _core.check_key(key, name)
    kwargs, takes_key = _prepare_method(method, fn, x, target, method_kwargs)
    k_noise, k_method = jax.random.split(key)
    method_keys = jax.random.split(k_method, n_samples + 1)
    if attributions is None:
        a = _explain_reference(method, fn, x, kwargs, takes_key, method_keys[0], post)
    else:
        a = _processed(attributions, x, post)
    dynamic, spec = _split_static(kwargs)
    keys = jax.random.split(k_noise, n_samples)
    sims, changed = [], []
    for start, stop in _core.batched_chunks(n_samples, batch_size):
        cut = slice(None) if (start, stop) == (0, n_samples) else slice(start, stop)
        s, c = _robust_chunk(
            fn=fn,
            method=method,
            spec=spec,
            takes_key=takes_key,
            post=post,
            noise=noise,
            perturb_func=perturb_func,
            measure=measure,
            x=x,
            a=a,
            keys=keys[cut],
            method_keys=method_keys[1:][cut],
            dynamic=dynamic,
            params=np.asarray(params, np.float32),
        )
        sims.append(s)
        changed.append(c)
    return _reduce(
        sims,
        changed,
        return_nan=return_nan,
        reduce=reduce,
        agg=_agg(return_aggregate, aggregate_func),
    )


@_core.contract
def local_lipschitz_estimate(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array | None = None,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    nr_samples: int = 200,
    perturb_mean: float = 0.0,
    perturb_std: float = 0.1,
    perturb_func: Callable[..., jax.Array] | None = None,
    similarity_func: Callable[..., jax.Array] | None = None,
    norm_numerator: Callable[..., jax.Array] = qc.distance_euclidean,
    norm_denominator: Callable[..., jax.Array] = qc.distance_euclidean,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    return_nan_when_prediction_changes: bool = False,
    method_kwargs: dict | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola, 2018), Quantus's
    ``LocalLipschitzEstimate``.

    The largest ratio, over ``nr_samples`` Gaussian perturbations
    ``x + N(perturb_mean, perturb_std^2)``, of the change of the explanation to the change
    of the input: ``max_s ||e(x) - e(x_s)|| / (||x - x_s|| + 1e-10)`` (Euclidean norms by
    default). Lower is more robust.

    Noise: sample ``s`` uses the ``s``-th of ``jax.random.split(k, nr_samples)`` with ``k``
    the first of ``jax.random.split(key)`` (Quantus draws from numpy's global generator).
    With ``return_nan_when_prediction_changes`` an example whose predicted class changes
    under any sample scores NaN (Quantus's ``np.max`` over NaN-marked samples).

    Args:
        method: A jaxattr method, called ``method(fn, x, target=target, **method_kwargs)``.
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: The explanation of x; computed with ``method`` when None.
        target: Passed to ``method``.
        key: PRNG key for the noise (and the method's keys).
        nr_samples: Perturbations per example.
        perturb_mean: Mean of the Gaussian noise.
        perturb_std: Standard deviation of the Gaussian noise.
        perturb_func: ``(key, x) -> x_perturbed`` replacing the Gaussian noise.
        similarity_func: ``(a=, b=, c=, d=, norm_numerator=, norm_denominator=) -> (N,)``;
            default :func:`lipschitz_constant`.
        norm_numerator: Distance of attributions, default Euclidean.
        norm_denominator: Distance of inputs, default Euclidean.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default per-example max).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        return_nan_when_prediction_changes: NaN for examples whose prediction changes.
        method_kwargs: Further keyword arguments of ``method``.
        batch_size: At most this many samples per compiled call.

    Returns:
        The estimate per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([(x ** 2).sum(1), x.sum(1)], 1)
        >>> x = jnp.ones((2, 3))
        >>> r = metrics.local_lipschitz_estimate(jaxattr.gradient, fn, x, target=0,
        ...                                      normalise=False, nr_samples=20,
        ...                                      key=jax.random.key(0))
        >>> r.round(3)                     # the gradient 2x is 2-Lipschitz
        Array([2., 2.], dtype=float32)
    """
    return _robustness(
        method,
        fn,
        x,
        attributions,
        target=target,
        key=key,
        nr_samples=nr_samples,
        noise="gaussian",
        params=(
            qc.check_number(perturb_mean, "perturb_mean"),
            qc.check_number(perturb_std, "perturb_std", minimum=0.0),
        ),
        perturb_func=perturb_func,
        measure=("lipschitz", norm_numerator, norm_denominator, similarity_func),
        post=_post(abs, normalise, normalise_func),
        method_kwargs=method_kwargs,
        return_nan=return_nan_when_prediction_changes,
        reduce="max",
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
        batch_size=batch_size,
        name="local_lipschitz_estimate",
    )


def _sensitivity(
    reduce,
    name,
    method,
    fn,
    x,
    attributions,
    *,
    target,
    key,
    nr_samples,
    lower_bound,
    upper_bound,
    perturb_func,
    similarity_func,
    norm_numerator,
    norm_denominator,
    abs,
    normalise,
    normalise_func,
    return_aggregate,  # noqa: A002
    aggregate_func,
    return_nan_when_prediction_changes,
    method_kwargs,
    batch_size,
):
    lo = qc.check_number(lower_bound, "lower_bound")
    if upper_bound is None:
        noise, params = "uniform_symmetric", (lo, lo)
    else:
        hi = qc.check_number(upper_bound, "upper_bound")
        if hi <= lo:
            raise ValueError(f"upper_bound must exceed lower_bound={lo}, got {hi}")
        noise, params = "uniform", (lo, hi)
    return _robustness(
        method,
        fn,
        x,
        attributions,
        target=target,
        key=key,
        nr_samples=nr_samples,
        noise=noise,
        params=params,
        perturb_func=perturb_func,
        measure=(
            "ratio",
            qc.resolve_norm(norm_numerator, "norm_numerator"),
            qc.resolve_norm(norm_denominator, "norm_denominator"),
            similarity_func,
        ),
        post=_post(abs, normalise, normalise_func),
        method_kwargs=method_kwargs,
        return_nan=return_nan_when_prediction_changes,
        reduce=reduce,
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
        batch_size=batch_size,
        name=name,
    )


@_core.contract
def max_sensitivity(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array | None = None,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    nr_samples: int = 200,
    lower_bound: float = 0.2,
    upper_bound: float | None = None,
    perturb_func: Callable[..., jax.Array] | None = None,
    similarity_func: Callable[..., jax.Array] | None = None,
    norm_numerator: Any = qc.fro_norm,
    norm_denominator: Any = qc.fro_norm,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    return_nan_when_prediction_changes: bool = False,
    method_kwargs: dict | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """Max-sensitivity (Yeh et al., 2019), Quantus's ``MaxSensitivity``.

    The largest relative change of the explanation over ``nr_samples`` uniform
    perturbations ``x + U(-lower_bound, lower_bound)`` (``U(lower_bound, upper_bound)``
    when ``upper_bound`` is given): ``max_s ||e(x) - e(x_s)|| / ||e(x)||`` with Frobenius
    norms of the flattened attributions. Lower is more robust. Quantus's defaults differ
    from Captum's ``sensitivity_max`` (:func:`jaxattr.sensitivity_max`): radius 0.2, 200
    samples.

    Noise and ``return_nan_when_prediction_changes`` as in
    :func:`local_lipschitz_estimate`.

    Args:
        method: A jaxattr method, called ``method(fn, x, target=target, **method_kwargs)``.
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: The explanation of x; computed with ``method`` when None.
        target: Passed to ``method``.
        key: PRNG key for the noise (and the method's keys).
        nr_samples: Perturbations per example.
        lower_bound: Half-width of the noise, or its lower end with ``upper_bound``.
        upper_bound: Upper end of the noise.
        perturb_func: ``(key, x) -> x_perturbed`` replacing the uniform noise.
        similarity_func: ``(a, b) -> (N, K)``, default the difference ``a - b``.
        norm_numerator: ``(N, K) -> (N,)`` or ``"fro"``/``"l2"``/``"linf"``.
        norm_denominator: ``(N, K) -> (N,)`` or a name.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func`` (Quantus's default False here).
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        return_nan_when_prediction_changes: NaN for examples whose prediction changes.
        method_kwargs: Further keyword arguments of ``method``.
        batch_size: At most this many samples per compiled call.

    Returns:
        The sensitivity per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([3.0 * x.sum(1), x.sum(1)], 1)
        >>> metrics.max_sensitivity(jaxattr.gradient, fn, jnp.ones((2, 4)), target=0,
        ...                         nr_samples=5, key=jax.random.key(0))
        Array([0., 0.], dtype=float32)
    """
    return _sensitivity(
        "max",
        "max_sensitivity",
        method,
        fn,
        x,
        attributions,
        target=target,
        key=key,
        nr_samples=nr_samples,
        lower_bound=lower_bound,
        upper_bound=upper_bound,
        perturb_func=perturb_func,
        similarity_func=similarity_func,
        norm_numerator=norm_numerator,
        norm_denominator=norm_denominator,
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
        method_kwargs=method_kwargs,
        batch_size=batch_size,
    )


@_core.contract
def avg_sensitivity(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array | None = None,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    nr_samples: int = 200,
    lower_bound: float = 0.2,
    upper_bound: float | None = None,
    perturb_func: Callable[..., jax.Array] | None = None,
    similarity_func: Callable[..., jax.Array] | None = None,
    norm_numerator: Any = qc.fro_norm,
    norm_denominator: Any = qc.fro_norm,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    return_nan_when_prediction_changes: bool = False,
    method_kwargs: dict | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """Avg-sensitivity (Yeh et al., 2019), Quantus's ``AvgSensitivity``.

    As :func:`max_sensitivity` with the mean over the samples instead of the maximum
    (``nanmean``, or ``mean`` with ``return_nan_when_prediction_changes``).

    Args:
        method: A jaxattr method, called ``method(fn, x, target=target, **method_kwargs)``.
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: The explanation of x; computed with ``method`` when None.
        target: Passed to ``method``.
        key: PRNG key for the noise (and the method's keys).
        nr_samples: Perturbations per example.
        lower_bound: Half-width of the noise, or its lower end with ``upper_bound``.
        upper_bound: Upper end of the noise.
        perturb_func: ``(key, x) -> x_perturbed`` replacing the uniform noise.
        similarity_func: ``(a, b) -> (N, K)``, default the difference.
        norm_numerator: ``(N, K) -> (N,)`` or ``"fro"``/``"l2"``/``"linf"``.
        norm_denominator: ``(N, K) -> (N,)`` or a name.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func`` (Quantus's default False here).
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        return_nan_when_prediction_changes: NaN for examples whose prediction changes.
        method_kwargs: Further keyword arguments of ``method``.
        batch_size: At most this many samples per compiled call.

    Returns:
        The sensitivity per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([3.0 * x.sum(1), x.sum(1)], 1)
        >>> metrics.avg_sensitivity(jaxattr.gradient, fn, jnp.ones((2, 4)), target=0,
        ...                         nr_samples=5, key=jax.random.key(0))
        Array([0., 0.], dtype=float32)
    """
    return _sensitivity(
        "mean",
        "avg_sensitivity",
        method,
        fn,
        x,
        attributions,
        target=target,
        key=key,
        nr_samples=nr_samples,
        lower_bound=lower_bound,
        upper_bound=upper_bound,
        perturb_func=perturb_func,
        similarity_func=similarity_func,
        norm_numerator=norm_numerator,
        norm_denominator=norm_denominator,
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
        method_kwargs=method_kwargs,
        batch_size=batch_size,
    )


# --------------------------------------------------------------------------------------
# Continuity
# --------------------------------------------------------------------------------------


@_core.cached_jit(("fn", "method", "spec", "takes_key", "post", "kind"))
def _continuity_chunk(
    *, fn, method, spec, takes_key, post, kind, x, a, shifts, method_keys, dynamic, labels
):
    kwargs = _join_static(dynamic, spec)
    n, w = x.shape[0], x.shape[-1]
    fill = qc.static_fill(kind, x.reshape(n, -1)).astype(x.dtype)
    cols = jnp.arange(w)

    def one(t, mk):
        src = cols - t
        valid = (src >= 0) & (src < w)
        moved = jnp.take(x, jnp.clip(src, 0, w - 1), axis=-1)
        xp = jnp.where(valid, moved, fill.reshape((n,) + (1,) * (x.ndim - 1)))
        changed = jnp.argmax(fn(xp), axis=-1) != labels
        ap = _method_call(method, fn, xp, kwargs, takes_key, mk)
        ap = qc.apply_post(_like(ap, xp, a), post)
        num = qc.distance_manhattan(a.reshape(n, -1), ap.reshape(n, -1))
        den = qc.distance_euclidean(x.reshape(n, -1), xp.reshape(n, -1))
        # An unchanged input (the shift 0, or an image equal to the fill) has the reference
        # explanation: Quantus recomputes it bit-identically (0 / 1e-9 = 0), a recomputation
        # here inside vmap differs by rounding, which the 1e-9 would blow up to ~1e3
        num = jnp.where(den == 0, jnp.zeros_like(num), num)
        return num / (den + 1e-9), changed

    return jax.vmap(one)(shifts, method_keys)


@_core.contract
def continuity(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: jax.Array,
    *,
    target: Any,
    key: jax.Array | None = None,
    nr_steps: int = 28,
    perturb_baseline: str | float = "black",
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    return_nan_when_prediction_changes: bool = False,
    method_kwargs: dict | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """Continuity (Montavon et al., 2018), Quantus's ``Continuity``.

    The image (N, C, H, W) is translated along its width by ``-W + k * dx`` pixels,
    ``k = 1 .. nr_steps`` with ``dx = (2W + 1) // nr_steps``, the uncovered columns filled
    with the baseline. The score is the largest ratio of the L1 change of the explanation to
    the L2 change of the input, ``max_k ||e(x) - e(x_k)||_1 / (||x - x_k||_2 + 1e-9)``.
    Lower is more continuous. With ``return_nan_when_prediction_changes``, a translation
    that changes the predicted class away from ``target`` makes the score NaN.

    The explanation of x is always recomputed with ``method`` (Quantus ignores a given
    ``a_batch`` here too). Quantus fills with ``"black"`` whatever ``perturb_baseline``
    says; jaxattr uses ``perturb_baseline`` (default ``"black"``: the same), and shifts by
    more than W are blank images rather than Quantus's index error. A translation that
    leaves an example unchanged (the shift 0, which the default ``dx`` hits for W > 13, or
    an image equal to the fill) scores 0: Quantus gets 0 by recomputing the same
    explanation; for a random ``method`` it would score the noise divided by 1e-9.

    Args:
        method: A jaxattr method, called ``method(fn, x, target=target, **method_kwargs)``.
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Image batch (N, C, H, W) (or (N, C, T) series, translated along T).
        target: Class labels: an int or N ints.
        key: PRNG key for a random ``method`` (unused otherwise).
        nr_steps: Number of translations.
        perturb_baseline: Fill of the uncovered columns: ``"black"``, ``"white"``,
            ``"mean"`` or a number.
        abs: Absolute attributions (Quantus's default True).
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        return_nan_when_prediction_changes: NaN when a translation changes the prediction.
        method_kwargs: Further keyword arguments of ``method``.
        batch_size: At most this many translations per compiled call.

    Returns:
        The score per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], 1)
        >>> x = jnp.ones((1, 1, 4, 4))
        >>> metrics.continuity(jaxattr.gradient, fn, x, target=0, nr_steps=4)
        Array([0.], dtype=float32)
    """
    x = qc.as_x(x, min_ndim=3)
    n, w = x.shape[0], x.shape[-1]
    steps = _core.check_positive_int(nr_steps, "nr_steps")
    kind = qc.check_baseline(perturb_baseline)
    if kind == "uniform":
        raise ValueError(
            "continuity fills with a fixed baseline: 'black', 'white', 'mean' or "
            "a number, got 'uniform'"
        )
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    labels = qc.labels(target, n)
    post = _post(abs, normalise, normalise_func)
    return_nan = qc.check_bool(
        return_nan_when_prediction_changes, "return_nan_when_prediction_changes"
    )
    kwargs, takes_key = _prepare_method(method, fn, x, target, method_kwargs)
    key = (
        _core.check_key(key, "continuity")
        if takes_key
        else (jax.random.key(0) if key is None else key)
    )
    method_keys = jax.random.split(key, steps + 1)
    a = _explain_reference(method, fn, x, kwargs, takes_key, method_keys[0], post)
    dx = (2 * w + 1) // steps
    shifts = np.array([-w + (k + 1) * dx for k in range(steps)], np.int32)
    dynamic, spec = _split_static(kwargs)
    values, changed = [], []
    for start, stop in _core.batched_chunks(steps, batch_size):
        cut = slice(None) if (start, stop) == (0, steps) else slice(start, stop)
        v, c = _continuity_chunk(
            fn=fn,
            method=method,
            spec=spec,
            takes_key=takes_key,
            post=post,
            kind=kind,
            x=x,
            a=a,
            shifts=shifts[cut],
            method_keys=method_keys[1:][cut],
            dynamic=dynamic,
            labels=labels,
        )
        values.append(v)
        changed.append(c)
    # Quantus takes np.max: a NaN (changed prediction) makes the score NaN
    return _reduce(
        values,
        changed,
        return_nan=return_nan,
        reduce="max_nan",
        agg=_agg(return_aggregate, aggregate_func),
    )
