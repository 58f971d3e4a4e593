"""Surrogate models: LIME, KernelSHAP, Captum's ``LimeBase`` and the linear fits they use."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core
from jaxattr._ablation import _feature_masks, _spread
from jaxattr._core import PyTree
from jaxattr._perturbation import (
    _check_batch_size,
    _check_mask_outputs,
    _eager,
    _per_example_scalar,
    _prepare,
    _scores,
)
from jaxattr._progress import progress, sync

__all__ = [
    "INTERPRETABLE_MODELS",
    "fit_lasso",
    "fit_linear",
    "fit_ridge",
    "fit_sgd",
    "get_exp_kernel_similarity_function",
    "kernel_shap",
    "kernel_shap_samples",
    "lime",
    "lime_base",
    "lime_samples",
]

Model = Any


# ---- interpretable surrogate models (LIME / KernelSHAP) --------------------------------

#: The named surrogates of :func:`lime` (Captum's ``SkLearnLasso``, ``SkLearnRidge``,
#: ``SkLearnLinearRegression``, ``SGDLasso``, ``SGDRidge``, ``SGDLinearRegression``).
INTERPRETABLE_MODELS = ("lasso", "ridge", "linear", "sgd_lasso", "sgd_ridge", "sgd_linear")

_DEFAULT_ALPHA = {"lasso": 0.01, "ridge": 1.0, "linear": 0.0}


def _weighted_center(z, y, w):
    p = w / jnp.sum(w)
    zbar = p @ z
    ybar = p @ y
    return z - zbar[None], y - ybar[None], p, zbar, ybar


def fit_linear(z: jax.Array, y: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted least squares with intercept (minimum-norm): ``(coef (F,), intercept)``.

    What scikit-learn's ``LinearRegression().fit(z, y, sample_weight=w)`` computes
    (Captum's ``SkLearnLinearRegression``).

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_linear(z, z @ jnp.array([2.0, -1.0]) + 3.0, jnp.ones(4))
        >>> coef.round(4), b.round(4)
        (Array([ 2., -1.], dtype=float32), Array(3., dtype=float32))
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    sq = jnp.sqrt(p)
    coef = jnp.linalg.lstsq(zc * sq[:, None], yc * sq)[0]
    return coef, ybar - zbar @ coef


def fit_ridge(
    z: jax.Array, y: jax.Array, w: jax.Array, alpha: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Weighted ridge regression with intercept: ``(coef (F,), intercept)``.

    Minimises ``sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2``, scikit-learn's
    ``Ridge(alpha).fit(z, y, sample_weight=w)`` (Captum's ``SkLearnRidge``): the weighted
    means are removed, then the normal equations are solved.

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).
        alpha: The L2 penalty.

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_ridge(z, z @ jnp.array([2.0, -1.0]), jnp.ones(4), alpha=1.0)
        >>> coef.round(4)
        Array([ 1. , -0.5], dtype=float32)
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    zw = zc * w[:, None]
    gram = zc.T @ zw + alpha * jnp.eye(z.shape[1], dtype=z.dtype)
    coef = jnp.linalg.solve(gram, zw.T @ yc)
    return coef, ybar - zbar @ coef


def fit_lasso(
    z: jax.Array,
    y: jax.Array,
    w: jax.Array,
    alpha: float = 0.01,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """Weighted Lasso with intercept by cyclic coordinate descent: ``(coef, intercept)``.

    Minimises ``sum_i p_i (y_i - b - z_i . c)^2 / 2 + alpha * |c|_1`` with
    ``p = w / sum(w)``: scikit-learn's ``Lasso(alpha).fit(z, y, sample_weight=w)``
    objective (the one Captum's ``SkLearnLasso`` fits). Stops when no coefficient moves
    by more than ``tol`` in a sweep, or after ``max_iter`` sweeps.

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).
        alpha: The L1 penalty.
        max_iter: Most coordinate sweeps.
        tol: Largest coefficient change that stops the sweeps.

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_lasso(z, z @ jnp.array([2.0, 0.0]), jnp.ones(4), alpha=0.1)
        >>> coef.round(3)
        Array([1.6, 0. ], dtype=float32)
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    norms = p @ (zc * zc)  # (F,)
    f = z.shape[1]

    def sweep(state):
        coef, r, _, it = state

        def update(carry, j):
            coef, r, delta = carry
            zj = zc[:, j]
            rho = p @ (zj * r) + norms[j] * coef[j]
            new = jnp.sign(rho) * jnp.maximum(jnp.abs(rho) - alpha, 0.0)
            new = jnp.where(norms[j] > 0, new / jnp.where(norms[j] > 0, norms[j], 1.0), 0.0)
            r = r - zj * (new - coef[j])
            delta = jnp.maximum(delta, jnp.abs(new - coef[j]))
            return (coef.at[j].set(new), r, delta), None

        (coef, r, delta), _ = jax.lax.scan(update, (coef, r, jnp.zeros((), z.dtype)), jnp.arange(f))
        return coef, r, delta, it + 1

    def cond(state):
        return (state[2] > tol) & (state[3] < max_iter)

    init = (jnp.zeros(f, z.dtype), yc, jnp.asarray(jnp.inf, z.dtype), 0)
    coef = jax.lax.while_loop(cond, sweep, init)[0]
    return coef, ybar - zbar @ coef


def fit_sgd(
    z: jax.Array,
    y: jax.Array,
    w: jax.Array,
    alpha: float = 1.0,
    reg_term: int | None = 1,
    *,
    max_epoch: int = 100,
    initial_lr: float = 0.01,
    patience: int = 10,
    threshold: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Captum's ``sgd_train_linear_model`` on one full batch: ``(coef (F,), intercept)``.

    The surrogate of Captum's ``SGDLasso`` (``reg_term=1``), ``SGDRidge`` (``2``) and
    ``SGDLinearRegression`` (``None``) as LIME trains it (all samples in one batch):
    from zero weights, plain gradient steps of size ``lr`` on
    ``sum_i p_i (y_i - b - z_i . c)^2 / 2 + alpha * ||c||_reg_term`` (``p = w / sum|w|``;
    the norm itself, not squared), at most ``max_epoch`` steps. As in Captum, the loss
    averaged over the last ``S + 1`` steps drives both the learning rate (halved after
    ``patience`` steps without a relative improvement of ``threshold``,
    ``ReduceLROnPlateau``) and the stop (``patience`` steps in a row without a new
    minimum, within ``threshold``). Deterministic: no random initialisation.

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).
        alpha: Weight of the penalty.
        reg_term: Order of the penalty's norm (1, 2) or ``None`` for none.
        max_epoch: Most steps (one per epoch: the batch is the whole sample set).
        initial_lr: The first step size.
        patience: Steps without improvement before the rate halves / the fit stops.
        threshold: Improvement threshold of both rules.

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_sgd(z, z @ jnp.array([2.0, -1.0]), jnp.ones(4), reg_term=None)
        >>> coef.shape, bool(coef[0] > 0 > coef[1])
        ((2,), True)
    """
    z = jnp.asarray(z, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    w = jnp.asarray(w, jnp.float32)
    s_count, f = z.shape
    pw = w / jnp.sum(jnp.abs(w))
    window = s_count + 1  # Captum's LossWindow keeps the last S + 1 losses

    def loss_fn(params):
        coef, b = params
        loss = jnp.sum(pw * (y - (z @ coef + b)) ** 2) / 2.0
        if reg_term == 1:  # |c| with torch's subgradient sign(0) = 0
            loss = loss + alpha * jnp.sum(jax.lax.stop_gradient(jnp.sign(coef)) * coef)
        elif reg_term == 2:
            sq = jnp.sum(coef * coef)
            loss = loss + alpha * jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
        elif reg_term is not None:
            loss = loss + alpha * jnp.sum(jnp.abs(coef) ** reg_term) ** (1.0 / reg_term)
        return loss

    inf = jnp.asarray(jnp.inf, jnp.float32)
    init = (
        (jnp.zeros(f, jnp.float32), jnp.zeros((), jnp.float32)),
        jnp.asarray(initial_lr, jnp.float32),
        jnp.zeros(window, jnp.float32),
        0,  # losses seen
        inf,  # tracker's minimum average loss
        0,  # tracker's count of steps without a new minimum
        inf,  # scheduler's best
        0,  # scheduler's bad steps
        0,  # epoch
        False,  # converged
    )

    def cond(state):
        return (state[8] < max_epoch) & ~state[9]

    def body(state):
        params, lr, buf, count, tmin, tcount, best, bad, epoch, _ = state
        loss, grads = jax.value_and_grad(loss_fn)(params)
        buf = buf.at[count % window].set(loss)
        count = count + 1
        avg = jnp.sum(buf) / jnp.minimum(count, window)
        seen = jnp.isfinite(tmin)
        worse = seen & ((avg > tmin) | (jnp.abs(tmin - avg) <= threshold + 1e-5 * jnp.abs(avg)))
        tcount = jnp.where(seen, jnp.where(worse, tcount + 1, 0), tcount)
        converged = worse & (tcount >= patience)
        tmin = jnp.where(~seen | (tmin >= avg), avg, tmin)
        stepped = jax.tree_util.tree_map(lambda p_, g: p_ - lr * g, params, grads)
        params = jax.tree_util.tree_map(lambda a, b_: jnp.where(converged, a, b_), params, stepped)
        better = avg < best * (1.0 - threshold)
        new_best = jnp.where(better, avg, best)
        new_bad = jnp.where(better, 0, bad + 1)
        reduce = new_bad > patience
        half = lr * 0.5
        new_lr = jnp.where(reduce & (lr - half > 1e-8), half, lr)
        new_bad = jnp.where(reduce, 0, new_bad)
        keep = lambda old, new: jnp.where(converged, old, new)  # noqa: E731
        return (
            params,
            keep(lr, new_lr),
            buf,
            count,
            tmin,
            tcount,
            keep(best, new_best),
            keep(bad, new_bad),
            jnp.where(converged, epoch, epoch + 1),
            converged,
        )

    params = jax.lax.while_loop(cond, body, init)[0]
    return params


def _fit_named(model: str, z, y, w, alpha):
    if model == "linear":
        return fit_linear(z, y, w)[0]
    if model == "lasso":
        return fit_lasso(z, y, w, alpha)[0]
    if model == "ridge":
        return fit_ridge(z, y, w, alpha)[0]
    reg = {"sgd_lasso": 1, "sgd_ridge": 2, "sgd_linear": None}[model]
    return fit_sgd(z, y, w, alpha, reg)[0]


@functools.partial(_caching.jit, static_argnums=0)
def _fit(model, z, y, w, alpha):
    return jax.vmap(lambda y_, w_, z_: _fit_named(model, z_, y_, w_, alpha))(y, w, z)


def _surrogate_kind(model: Any) -> str:
    if isinstance(model, str):
        _core.check_choice(model, "interpretable_model", INTERPRETABLE_MODELS)
        return "named"
    if hasattr(model, "fit"):
        return "object"
    if callable(model):
        return "callable"
    raise TypeError(
        f"interpretable_model must be one of {list(INTERPRETABLE_MODELS)}, an object with "
        f"fit(z, y, sample_weight=w) and coef_ (scikit-learn's interface), or a function "
        f"(z, y, w) -> coefficients; got {type(model).__name__}"
    )


def _fit_surrogate(model: Any, z, y, w, alpha: float | None) -> jax.Array:
    """Coefficients (E, F) of one surrogate per row of ``z`` (E, S, F), ``y``/``w`` (E, S)."""
    kind = _surrogate_kind(model)
    z = jnp.asarray(z, jnp.float32)
    if kind == "named":
        a = _DEFAULT_ALPHA.get(model, 1.0) if alpha is None else float(alpha)
        return _fit(model, z, y, w, a)
    if kind == "callable":
        return jax.vmap(lambda z_, y_, w_: jnp.reshape(model(z_, y_, w_), (-1,)))(z, y, w)
    if not _core.is_concrete(z, y, w):
        raise ValueError(
            f"interpretable_model={type(model).__name__}(...) fits on the host (NumPy): call "
            f"the method eagerly, outside jit/vmap, or pass a named model or a JAX function"
        )
    coefs = []
    for z_e, y_e, w_e in zip(np.asarray(z), np.asarray(y), np.asarray(w), strict=True):
        model.fit(z_e, y_e, sample_weight=w_e)
        if not hasattr(model, "coef_"):
            raise TypeError(
                f"interpretable_model {type(model).__name__} has no coef_ after fit: LIME "
                f"returns a linear surrogate's coefficients"
            )
        coefs.append(np.asarray(model.coef_, np.float32).reshape(-1))
    return jnp.asarray(np.stack(coefs))


@functools.partial(_caching.jit, static_argnums=(1, 2, 3))
def kernel_shap_samples(key: jax.Array, n: int, n_features: int, n_samples: int) -> jax.Array:
    """The binary coalitions :func:`kernel_shap` draws: (N, n_samples, F), 1 = from x.

    As Captum: the first sample is all ones, the second all zeros, then the number of
    features ``k`` is drawn with ``p(k) ~ (F - 1) / (k (F - k))`` and ``k`` features are
    chosen uniformly (the top ``k`` of a normal draw).

    Example:
        >>> import jax, jaxattr
        >>> jaxattr.kernel_shap_samples(jax.random.key(0), 1, 3, 4).shape
        (1, 4, 3)
    """
    f = n_features
    head = jnp.stack([jnp.ones(f, bool), jnp.zeros(f, bool)])
    rest = max(n_samples - 2, 0)
    ks = np.arange(f, dtype=np.float64)
    probs = np.zeros(f)
    probs[1:] = (f - 1) / (ks[1:] * (f - ks[1:]))
    logits = jnp.log(jnp.asarray(probs / probs.sum() if probs.sum() > 0 else probs + 1.0))

    def one(k):
        k_num, k_pick = jax.random.split(k)
        num = jax.random.categorical(k_num, logits, shape=(rest,))
        vals = jax.random.normal(k_pick, (rest, f))
        order = jnp.argsort(-vals, axis=1)
        rank = jnp.argsort(order, axis=1)
        tail = rank < num[:, None]
        return jnp.concatenate([head, tail])[:n_samples]

    return jax.vmap(one)(jax.random.split(key, n))


@functools.partial(_caching.jit, static_argnums=(1, 2, 3))
def lime_samples(key: jax.Array, n: int, n_features: int, n_samples: int) -> jax.Array:
    """The binary samples :func:`lime` draws: (N, n_samples, F), each bit Bernoulli(0.5).

    Example:
        >>> import jax, jaxattr
        >>> jaxattr.lime_samples(jax.random.key(0), 2, 3, 5).shape
        (2, 5, 3)
    """
    return jax.random.bernoulli(key, 0.5, (n, n_samples, n_features))


def _flat_concat(tree: PyTree) -> jax.Array:
    return jnp.concatenate(
        [jnp.reshape(a, (-1,)).astype(jnp.float32) for a in jax.tree_util.tree_leaves(tree)]
    )


@dataclasses.dataclass(frozen=True)
class _ExpKernel:
    """Captum's ``get_exp_kernel_similarity_function`` (equal options compare equal)."""

    distance_mode: str = "cosine"
    kernel_width: float = 1.0

    def __call__(self, original_input, perturbed_input, perturbed_interpretable_input, **kw):
        a, b = _flat_concat(original_input), _flat_concat(perturbed_input)
        if self.distance_mode == "cosine":
            denom = jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-8)
            d = 1.0 - jnp.dot(a, b) / denom
        else:
            d = jnp.linalg.norm(a - b)
        return jnp.exp(-(d**2) / (2.0 * self.kernel_width**2))


def get_exp_kernel_similarity_function(
    distance_mode: str = "cosine", kernel_width: float = 1.0
) -> Callable[..., jax.Array]:
    """Captum's exponential similarity kernel for LIME: ``exp(-d^2 / (2 width^2))``.

    ``d`` is the cosine distance (``1 - cos``) or the Euclidean distance between the
    original and the perturbed input, each flattened (a tuple's inputs concatenated).

    Args:
        distance_mode: ``"cosine"`` or ``"euclidean"``.
        kernel_width: The kernel width (> 0).

    Returns:
        ``similarity_func(original_input, perturbed_input, perturbed_interpretable_input,
        **kwargs) -> weight`` (a JAX scalar), for :func:`lime`'s ``similarity_func``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> sim = jaxattr.get_exp_kernel_similarity_function("euclidean", 1.0)
        >>> round(float(sim(jnp.ones((1, 2)), jnp.array([[1.0, 0.0]]), None)), 4)
        0.6065
    """
    _core.check_choice(distance_mode, "distance_mode", ("cosine", "euclidean"))
    if (
        isinstance(kernel_width, bool)
        or not isinstance(kernel_width, (int, float, np.number))
        or kernel_width <= 0
    ):
        raise ValueError(f"kernel_width must be a float > 0, got {kernel_width!r}")
    return _ExpKernel(distance_mode, float(kernel_width))


@dataclasses.dataclass(frozen=True)
class _KernelShapWeights:
    """Captum's ``kernel_shap_similarity_kernel``: 1e6 for the empty and full coalitions."""

    def __call__(self, original_input, perturbed_input, perturbed_interpretable_input, **kw):
        z = jnp.asarray(perturbed_interpretable_input)
        k = jnp.sum(z)
        return jnp.where((k == 0) | (k == z.size), 1e6, 1.0).astype(jnp.float32)


@_core.cached_jit(
    (
        "fn",
        "inputs",
        "perturb_func",
        "transform",
        "to_interp",
        "similarity",
        "interp_space",
        "agg",
        "lime_kw",
        "n_feat",
    )
)
def _lime_chunk(
    *,
    fn,
    inputs,
    x,
    baselines,
    fmasks,
    z,
    keys,
    args,
    target,
    perturb_func,
    transform,
    to_interp,
    similarity,
    interp_space,
    agg,
    lime_kw,
    n_feat,
):
    """One chunk of LIME samples: ``(z (P, E, F), scores (P, O), weights (P, E))``.

    ``E`` is the number of surrogates: N (one per example, each sees its example as a
    batch of one) or 1 (aggregate ``fn``: one for the whole batch). Samples come from
    ``z`` (P, E, F) or are drawn by ``perturb_func`` from ``keys`` (P, E).
    """
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    n = inputs.n
    view = (lambda a: a[None]) if agg else (lambda a: a[:, None])  # noqa: E731
    x_e = [view(a) for a in x_leaves]
    b_e = None
    if baselines is not None:
        b_e = [view(a) for a in treedef.flatten_up_to(_core.expand_baselines(baselines, x))]
    fm_e = None
    if fmasks:
        if agg:
            fm_e = [jnp.asarray(fm)[None] for fm in fmasks]
        else:
            fm_e = [jnp.broadcast_to(jnp.asarray(fm), (n, *fm.shape[1:]))[:, None] for fm in fmasks]
    unflatten = functools.partial(jax.tree_util.tree_unflatten, treedef)

    def per_example(xl, bl, fml, z_e, key_e):
        xe = unflatten(xl)
        kw = {}
        if lime_kw:
            kw = {
                "feature_mask": unflatten(fml),
                "baselines": unflatten(bl),
                "num_interp_features": n_feat,
            }
        xp = None
        if z_e is None:
            sample = perturb_func(key_e, xe, **kw)
            if interp_space:
                z_row = jnp.reshape(sample, (1, -1))
            else:
                xp = sample
                z_row = jnp.reshape(to_interp(sample, xe, **kw), (1, -1))
        else:
            z_row = z_e[None]
        if xp is None:
            if transform is not None:
                xp = transform(z_row, xe, **kw)
            else:  # Captum's default_from_interp_rep_transform
                on = [z_row[0].astype(bool)[m] for m in fml]
                xp = unflatten([jnp.where(o, a, b_) for o, a, b_ in zip(on, xl, bl, strict=True)])
        xp_leaves = treedef.flatten_up_to(xp)
        xp_leaves = [jnp.asarray(a).astype(r.dtype) for a, r in zip(xp_leaves, xl, strict=True)]
        w = jnp.reshape(similarity(xe, unflatten(xp_leaves), z_row, **kw), ())
        return z_row[0].astype(jnp.float32), xp_leaves, w.astype(jnp.float32)

    def one(z_p, key_p):
        zs, xps, ws = jax.vmap(per_example)(x_e, b_e, fm_e, z_p, key_p)
        xp = unflatten([a.reshape(-1, *a.shape[2:]) for a in xps])
        return zs, _scores(fn, inputs, xp, args, target), ws

    return jax.vmap(one)(z, keys)


def _lime_run(
    fn,
    x,
    args,
    inputs,
    t,
    *,
    agg,
    baselines,
    fmasks,
    z,
    keys,
    perturb_func,
    transform,
    to_interp,
    similarity,
    interp_space,
    lime_kw,
    n_feat,
    batch_size,
    show_progress,
    desc,
):
    """Evaluate every sample (chunked) -> ``z`` (E, S, F), scores (E, S), weights (E, S)."""
    total = (z if z is not None else keys).shape[0]
    parts = []
    show = _eager(x, show_progress)
    chunks = _core.batched_chunks(total, batch_size, backward=False)
    for start, stop in progress(chunks, total=len(chunks), desc=desc, enabled=show):
        part = _lime_chunk(
            fn=fn,
            inputs=inputs,
            x=x,
            baselines=baselines,
            fmasks=fmasks,
            z=None if z is None else z[start:stop],
            keys=None if keys is None else keys[start:stop],
            args=args,
            target=t,
            perturb_func=perturb_func,
            transform=transform,
            to_interp=to_interp,
            similarity=similarity,
            interp_space=interp_space,
            agg=agg,
            lime_kw=lime_kw,
            n_feat=n_feat,
        )
        parts.append(sync(part, show))
    zs, s, w = (jnp.concatenate(p, axis=0) for p in zip(*parts, strict=True))
    return jnp.swapaxes(zs, 0, 1), s.T, w.T


def _lime_mode(t: Any, out_shape: tuple, n: int, method: str) -> bool:
    """True for one surrogate for the whole batch (aggregate ``fn``), False for one per
    example; anything else is Captum's "Invalid number of outputs" error."""
    if _per_example_scalar(t, out_shape, n):
        return False
    if math.prod(out_shape) == 1:
        return True
    raise ValueError(
        f"target=None needs one output per example (or one for the whole batch), but fn "
        f"returns shape {out_shape}; {method} fits one surrogate per explained output: pass "
        f"target=<class index>, a tuple index, or a cotangent"
    )


def _check_callable(value: Any, name: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def _lime_attribute(
    fn,
    x,
    *,
    key,
    target,
    baselines,
    feature_mask,
    n_samples,
    interpretable_model,
    alpha,
    similarity_func,
    perturb_func,
    from_interp_rep_transform,
    return_input_shape,
    default_samples,
    batch_size,
    show_progress,
    args,
    desc,
):
    """LIME with a binary interpretable space over ``feature_mask`` (Lime, KernelShap)."""
    key = _core.check_key(key, desc)
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    _surrogate_kind(interpretable_model)
    for value, name in (
        (similarity_func, "similarity_func"),
        (perturb_func, "perturb_func"),
        (from_interp_rep_transform, "from_interp_rep_transform"),
    ):
        _check_callable(value, name)
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    agg = _lime_mode(t, out_shape, inputs.n, desc)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    if agg:
        _check_mask_outputs(fmasks, 1, out_shape)
    e = 1 if agg else inputs.n
    z = keys = None
    if perturb_func is None:
        z = jnp.swapaxes(default_samples(key, e, f, n_samples), 0, 1)  # (S, E, F)
    else:
        keys = jax.random.split(key, (n_samples, e))
    zs, y, w = _lime_run(
        fn,
        x,
        args,
        inputs,
        t,
        agg=agg,
        baselines=b,
        fmasks=fmasks,
        z=z,
        keys=keys,
        perturb_func=perturb_func,
        transform=from_interp_rep_transform,
        to_interp=None,
        similarity=similarity_func,
        interp_space=True,
        lime_kw=True,
        n_feat=f,
        batch_size=batch_size,
        show_progress=show_progress,
        desc=desc,
    )
    coef = _fit_surrogate(interpretable_model, zs, y, w, alpha)
    if not return_input_shape:
        return coef
    return _spread(coef, fmasks, x)


@_core.contract
def kernel_shap(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    n_samples: int = 25,
    return_input_shape: bool = True,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree | jax.Array:
    """KernelSHAP (Lundberg and Lee, 2017), Captum's ``KernelShap``.

    Draws ``n_samples`` coalitions per example (:func:`kernel_shap_samples`), evaluates
    x with the absent features at the baseline, and fits a weighted linear regression of
    the scores on the coalitions in JAX; the weights are Captum's (1e6 for the empty and
    full coalitions, 1 otherwise, the Shapley kernel being in the sampling). The
    coefficient of a feature is given to all of its elements. One surrogate per example;
    an aggregate ``fn`` (one scalar for the whole batch, ``target=None``) gets one
    surrogate for the batch and attributions leading with 1, as in Captum.

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``; ``y`` of shape (N, ...), or a
            scalar for the whole batch.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key for the coalitions.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Coalitions per example.
        return_input_shape: ``True``: each element gets its feature's coefficient (x's
            structure); ``False``: the surrogates' coefficients, shape (E, F) with E = N
            (or 1 for an aggregate ``fn``) and F the features in sorted id order.
        batch_size: At most this many coalitions per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure (float32 for int/bool inputs), or the (E, F)
        coefficients.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> attr = jaxattr.kernel_shap(fn, jnp.ones((1, 3)), key=jax.random.key(0))
        >>> attr.round(3)
        Array([[2., 2., 2.]], dtype=float32)
    """
    return _lime_attribute(
        fn,
        x,
        key=key,
        target=target,
        baselines=baselines,
        feature_mask=feature_mask,
        n_samples=n_samples,
        interpretable_model="linear",
        alpha=None,
        similarity_func=_KernelShapWeights(),
        perturb_func=None,
        from_interp_rep_transform=None,
        return_input_shape=return_input_shape,
        default_samples=kernel_shap_samples,
        batch_size=batch_size,
        show_progress=show_progress,
        args=args,
        desc="kernel_shap",
    )


@_core.contract
def lime(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    n_samples: int = 25,
    interpretable_model: Any = "lasso",
    alpha: float | None = None,
    similarity_func: Callable[..., Any] | None = None,
    perturb_func: Callable[..., Any] | None = None,
    from_interp_rep_transform: Callable[..., Any] | None = None,
    distance_mode: str = "cosine",
    kernel_width: float = 1.0,
    return_input_shape: bool = True,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree | jax.Array:
    """LIME (Ribeiro et al., 2016), Captum's ``Lime`` with its defaults and options.

    Draws ``n_samples`` binary vectors per example (each feature kept with probability
    0.5, :func:`lime_samples`, or ``perturb_func``), evaluates x with the dropped
    features at the baseline (or ``from_interp_rep_transform``), weights each sample by
    ``similarity_func`` (default: the exponential kernel ``exp(-d^2 / (2 width^2))`` of
    its cosine distance to x, :func:`get_exp_kernel_similarity_function`) and fits the
    interpretable linear model. One surrogate per example, which it sees as a batch of
    one (as Captum); an aggregate ``fn`` (one scalar for the whole batch) gets one
    surrogate for the batch, and the attributions lead with 1.

    The user functions are JAX functions (traced, vmapped over examples and samples),
    called as Captum calls them, with the keywords ``feature_mask``, ``baselines`` (the
    example's, with x's structure) and ``num_interp_features``:

    - ``perturb_func(key, original_input, **kwargs)``: one interpretable sample, shape
      (1, F) or (F,).
    - ``from_interp_rep_transform(sample (1, F), original_input, **kwargs)``: the model
      input for that sample, original_input's structure and shapes.
    - ``similarity_func(original_input, perturbed_input, sample (1, F), **kwargs)``:
      the sample's weight (a scalar).

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``; ``y`` of shape (N, ...), or a
            scalar for the whole batch.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key for the samples.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Samples per example.
        interpretable_model: The surrogate: a name in :data:`INTERPRETABLE_MODELS`
            (``"lasso"``, Captum's default ``SkLearnLasso(alpha=0.01)``; ``"ridge"``,
            ``"linear"``; ``"sgd_lasso"``, ``"sgd_ridge"``, ``"sgd_linear"``: Captum's
            SGD-trained models, :func:`fit_sgd`), all fitted in JAX; an object with
            scikit-learn's ``fit(z, y, sample_weight=w)`` and ``coef_`` (fitted on the
            host, eager calls only); or a JAX function ``(z (S, F), y (S,), w (S,)) ->
            coefficients (F,)``.
        alpha: The named model's penalty; ``None``: 0.01 for ``"lasso"``, 1.0 for
            ``"ridge"`` and the SGD models (Captum's defaults).
        similarity_func: The sample weight (see above); replaces ``distance_mode`` and
            ``kernel_width``.
        perturb_func: The sampler (see above); default Bernoulli(0.5) per feature.
        from_interp_rep_transform: Sample -> model input (see above); default: features
            off take the baseline.
        distance_mode: ``"cosine"`` or ``"euclidean"`` (the default kernel's distance).
        kernel_width: Width of the default exponential kernel.
        return_input_shape: ``True``: each element gets its feature's coefficient (x's
            structure); ``False``: the surrogates' coefficients, shape (E, F) with E = N
            (or 1 for an aggregate ``fn``) and F the features in sorted id order.
        batch_size: At most this many samples per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure (float32 for int/bool inputs), or the (E, F)
        coefficients.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> attr = jaxattr.lime(fn, jnp.ones((1, 3)), key=jax.random.key(0),
        ...                     interpretable_model="linear")
        >>> attr.round(3)
        Array([[2., 2., 2.]], dtype=float32)
        >>> jaxattr.lime(fn, jnp.ones((1, 3)), key=jax.random.key(0), n_samples=40,
        ...              interpretable_model="ridge", return_input_shape=False).shape
        (1, 3)
    """
    if similarity_func is None:
        similarity_func = get_exp_kernel_similarity_function(distance_mode, kernel_width)
    else:
        _core.check_choice(distance_mode, "distance_mode", ("cosine", "euclidean"))
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or alpha < 0
    ):
        raise ValueError(f"alpha must be a float >= 0, got {alpha!r}")
    return _lime_attribute(
        fn,
        x,
        key=key,
        target=target,
        baselines=baselines,
        feature_mask=feature_mask,
        n_samples=n_samples,
        interpretable_model=interpretable_model,
        alpha=alpha,
        similarity_func=similarity_func,
        perturb_func=perturb_func,
        from_interp_rep_transform=from_interp_rep_transform,
        return_input_shape=return_input_shape,
        default_samples=lime_samples,
        batch_size=batch_size,
        show_progress=show_progress,
        args=args,
        desc="lime",
    )


@_core.contract
def lime_base(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    interpretable_model: Any = "lasso",
    similarity_func: Callable[..., Any] | None = None,
    perturb_func: Callable[..., Any] | None = None,
    perturb_interpretable_space: bool = True,
    from_interp_rep_transform: Callable[..., Any] | None = None,
    to_interp_rep_transform: Callable[..., Any] | None = None,
    target: Any = None,
    n_samples: int = 50,
    alpha: float | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> jax.Array:
    """The general LIME framework, Captum's ``LimeBase``: returns the surrogate's coefficients.

    ``perturb_func`` draws a sample, either in the interpretable space
    (``perturb_interpretable_space=True``: a vector of F values, mapped to a model input
    by ``from_interp_rep_transform``) or in the input space (``False``: a perturbed
    input, mapped to its interpretable vector by ``to_interp_rep_transform``). The model
    scores the inputs, ``similarity_func`` weighs the samples, and
    ``interpretable_model`` is fitted to (vector, score, weight). The functions are JAX
    functions (traced, vmapped), called without extra keywords:

    - ``perturb_func(key, original_input)``: the sample.
    - ``from_interp_rep_transform(sample (1, F), original_input)`` /
      ``to_interp_rep_transform(perturbed_input, original_input)``.
    - ``similarity_func(original_input, perturbed_input, sample (1, F))``: a scalar.

    As in :func:`lime`, every example of a batch gets its own surrogate and sees itself
    as a batch of one (``original_input`` has batch size 1); an aggregate ``fn`` (one
    scalar for the whole batch) gets one surrogate for the batch.

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key; sample ``s`` of surrogate ``e`` uses
            ``jax.random.split(key, (n_samples, E))[s, e]``.
        interpretable_model: As in :func:`lime`.
        similarity_func: The sample weight.
        perturb_func: The sampler.
        perturb_interpretable_space: Whether ``perturb_func`` samples in the
            interpretable space.
        from_interp_rep_transform: Interpretable sample -> model input (required when
            sampling in the interpretable space).
        to_interp_rep_transform: Model input -> interpretable vector (required when
            sampling in the input space).
        target: What to explain (see :func:`jaxattr.select_target`).
        n_samples: Samples per surrogate (Captum's default 50).
        alpha: The named model's penalty (see :func:`lime`).
        batch_size: At most this many samples per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The coefficients, shape (E, F): E = N surrogates (1 for an aggregate ``fn``).

    Raises:
        TypeError: A missing or non-callable function.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x * jnp.array([[1.0, -2.0]])).sum(1)
        >>> coef = jaxattr.lime_base(
        ...     fn, jnp.ones((1, 2)), key=jax.random.key(0), interpretable_model="linear",
        ...     similarity_func=lambda x, xp, z: 1.0,
        ...     perturb_func=lambda k, x: jax.random.bernoulli(k, 0.5, (2,)),
        ...     from_interp_rep_transform=lambda z, x: x * z.astype(x.dtype))
        >>> coef.round(3)
        Array([[ 1., -2.]], dtype=float32)
    """
    key = _core.check_key(key, "lime_base")
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    _surrogate_kind(interpretable_model)
    for value, name in (
        (similarity_func, "similarity_func"),
        (perturb_func, "perturb_func"),
        (from_interp_rep_transform, "from_interp_rep_transform"),
        (to_interp_rep_transform, "to_interp_rep_transform"),
    ):
        _check_callable(value, name)
    if similarity_func is None or perturb_func is None:
        raise TypeError(
            "lime_base needs similarity_func and perturb_func (Captum's LimeBase has no "
            f"defaults), got similarity_func={similarity_func!r}, perturb_func={perturb_func!r}"
        )
    if perturb_interpretable_space and from_interp_rep_transform is None:
        raise TypeError(
            "perturb_interpretable_space=True needs from_interp_rep_transform (interpretable "
            "sample -> model input), got None"
        )
    if not perturb_interpretable_space and to_interp_rep_transform is None:
        raise TypeError(
            "perturb_interpretable_space=False needs to_interp_rep_transform (model input -> "
            "interpretable vector), got None"
        )
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    agg = _lime_mode(t, out_shape, inputs.n, "lime_base")
    e = 1 if agg else inputs.n
    keys = jax.random.split(key, (n_samples, e))
    one_x = jax.tree_util.tree_map(lambda a: a if agg else a[:1], x)
    sample = jax.eval_shape(perturb_func, keys[0, 0], one_x)
    if not perturb_interpretable_space:
        sample = jax.eval_shape(to_interp_rep_transform, sample, one_x)
    n_feat = int(math.prod(sample.shape))
    zs, y, w = _lime_run(
        fn,
        x,
        args,
        inputs,
        t,
        agg=agg,
        baselines=None,
        fmasks=[],
        z=None,
        keys=keys,
        perturb_func=perturb_func,
        transform=from_interp_rep_transform,
        to_interp=to_interp_rep_transform,
        similarity=similarity_func,
        interp_space=bool(perturb_interpretable_space),
        lime_kw=False,
        n_feat=n_feat,
        batch_size=batch_size,
        show_progress=show_progress,
        desc="lime_base",
    )
    return _fit_surrogate(interpretable_model, zs, y, w, alpha)
