"""Causal language models for :mod:`jaxattr.llm`: the model contract, padding, scoring.

The contract (documented in ``jaxattr.llm``): a causal LM is called as
``model(input_ids, **extra) -> logits`` with ``input_ids`` int32 of shape (N, S) and
``logits`` of shape (N, S, V) (or a dict holding ``"logits"``), where ``extra`` is a subset
of ``attention_mask`` and ``position_ids`` (each int32 (N, S)). A structured model (a bridged
torch model, a Flax adapter) is run through ``model.apply(model.params, ...)``, which lets
the scorer compute the vocabulary projection only at the positions whose log-probabilities
are needed (the *logits layer* is fed the hidden states of those positions only).

Everything here is pure JAX; the model is always a pytree argument of the compiled
programs (its weights are traced, never baked in as constants).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching

#: The keyword inputs jaxattr.llm can give a model, besides ``input_ids``.
EXTRA_INPUTS = ("attention_mask", "position_ids")

#: Padding sides.
PADDINGS = ("right", "left")


@dataclasses.dataclass(frozen=True)
class Call:
    """How to call a model (static: keys compiled programs).

    Attributes:
        structured: Run through ``model.apply(params, ids, intercept=...)``.
        kw_names: Keyword inputs the model takes, a subset of :data:`EXTRA_INPUTS`.
        head: Name of the layer producing the logits, fed only the scored positions;
            ``None``: the full (N, S, V) logits are computed and the positions gathered.
        vocab: The vocabulary size V (the logits' last dimension).
    """

    structured: bool
    kw_names: tuple[str, ...]
    head: str | None
    vocab: int = 0


def is_structured(model: Any) -> bool:
    """Whether ``model`` exposes layers (``apply``, ``layers``, ``params``)."""
    return all(hasattr(model, a) for a in ("apply", "layers", "params"))


def static_length(model: Any) -> int | None:
    """The sequence length a bridged model was exported with, when it is fixed.

    ``jaxattr.bridge.Converted`` keeps its exported input specs; their dynamic dimensions
    are ``None``. Any other model: ``None`` (no fixed length known).
    """
    specs = getattr(model, "_inputs", None)
    try:
        shape = specs[0].shape
    except (TypeError, IndexError, AttributeError):
        return None
    if shape is None or len(shape) != 2 or shape[1] is None:
        return None
    return int(shape[1])


def extra_inputs_of(model: Any, extra_inputs: Sequence[str] | None) -> tuple[str, ...]:
    """Validate ``extra_inputs`` (or read them from a bridged model's keyword inputs)."""
    if extra_inputs is None:
        names = tuple(getattr(model, "kwarg_names", ()) or ())
        where = "the model's exported keyword inputs (kwarg_names)"
    else:
        if isinstance(extra_inputs, str):
            raise TypeError(
                f"extra_inputs must be a sequence of names from {list(EXTRA_INPUTS)}, got the "
                f"string {extra_inputs!r}; write ({extra_inputs!r},)"
            )
        names = tuple(extra_inputs)
        where = "extra_inputs"
    bad = [n for n in names if n not in EXTRA_INPUTS]
    if bad:
        raise ValueError(
            f"{where}: jaxattr.llm can give a model only {list(EXTRA_INPUTS)} besides "
            f"input_ids, got {list(names)} ({bad} unknown); convert the model with those "
            f"keyword inputs only, or wrap it in a function taking them"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: names must be distinct, got {list(names)}")
    return names


def logits_of(out: Any) -> jax.Array:
    """The logits array of a model output (an array, or a dict with ``"logits"``)."""
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise ValueError(
                f"model: the output is a dict with keys {sorted(out)} and no 'logits'; "
                f"return the logits (bridge: convert with output='logits')"
            )
        out = out["logits"]
    if not hasattr(out, "shape") or len(out.shape) != 3:
        shown = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"model: expected logits of shape (N, S, vocab), got {shown}; a Hugging Face "
            f"model converted with the bridge needs output='logits'"
        )
    return out


def _kwargs(call: Call, mask: jax.Array, pos: jax.Array) -> dict[str, jax.Array]:
    kw = {}
    if "attention_mask" in call.kw_names:
        kw["attention_mask"] = mask
    if "position_ids" in call.kw_names:
        kw["position_ids"] = pos
    return kw


def call_logits(
    model: Any,
    call: Call,
    ids: jax.Array,
    mask: jax.Array,
    pos: jax.Array,
    at: jax.Array,
    *,
    params: Any = None,
    intercept: Callable[..., Any] | None = None,
) -> jax.Array:
    """Logits at positions ``at`` (N or 1, P) of the sequences ``ids`` (N, S): (N, P, V)."""
    kw = _kwargs(call, mask, pos)
    n = ids.shape[0]
    at = jnp.broadcast_to(at, (n, at.shape[-1]))
    if call.structured:
        params = model.params if params is None else params
        head = call.head

        def icpt(layer, layer_fn, layer_params, *xs):
            if head is not None and layer.name == head:
                h = xs[0]
                h = jnp.take_along_axis(h, at[:, :, None], axis=1)
                xs = (h, *xs[1:])
            if intercept is None:
                return layer_fn(layer_params, *xs)
            return intercept(layer, layer_fn, layer_params, *xs)

        use = icpt if (head is not None or intercept is not None) else None
        out = logits_of(model.apply(params, ids, intercept=use, **kw))
        if head is not None:
            return out
    else:
        out = logits_of(model(ids, **kw))
    return jnp.take_along_axis(out, at[:, :, None], axis=1)


def token_log_probs(
    model: Any,
    call: Call,
    ids: jax.Array,
    mask: jax.Array,
    pos: jax.Array,
    at: jax.Array,
    tgt: jax.Array,
    *,
    params: Any = None,
    intercept: Callable[..., Any] | None = None,
) -> jax.Array:
    """``log p(tgt[t] | ids[:, :at[t] + 1])`` for every target token: (N, T), float32."""
    logits = call_logits(model, call, ids, mask, pos, at, params=params, intercept=intercept)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    idx = jnp.broadcast_to(tgt[None, :, None], (lp.shape[0], lp.shape[1], 1))
    return jnp.take_along_axis(lp, idx, axis=-1)[..., 0]


def outputs(lp: jax.Array, per_token: bool, prob: bool) -> jax.Array:
    """Captum's scores: ``[total, per token...]`` (N, 1 + T), or the total (N,)."""
    total = jnp.sum(lp, axis=1)
    out = jnp.concatenate([total[:, None], lp], axis=1) if per_token else total
    return jnp.exp(out) if prob else out


# ------------------------------------------------------------------------------ resolving
_HEADS = _caching.LRU(32)


def resolve(
    model: Any,
    *,
    extra_inputs: Sequence[str] | None,
    logits_layer: str | None,
    length: int,
) -> Call:
    """Validate the model contract on an abstract run at sequence ``length``.

    Finds the logits layer for ``logits_layer="auto"``: the last layer run, when it is a
    linear layer whose output is the model's output (nothing after it) and whose input is
    the (N, S, d) hidden states; otherwise the logits are computed in full.
    """
    kw_names = extra_inputs_of(model, extra_inputs)
    structured = is_structured(model)
    if logits_layer is not None and logits_layer != "auto" and not isinstance(logits_layer, str):
        raise TypeError(
            f"logits_layer must be 'auto', a layer name or None, got {type(logits_layer).__name__}"
        )
    if not structured and logits_layer not in (None, "auto"):
        raise ValueError(
            f"logits_layer={logits_layer!r} needs a structured model (a bridged torch model or "
            f"a Flax adapter), got {type(model).__name__}"
        )
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    plain = Call(structured, kw_names, None)
    key = None
    try:
        key = (_caching.partition(model)[0], length, kw_names, logits_layer)
        hash(key)
    except TypeError:
        key = None
    if key is not None:
        hit = _HEADS.get(key)
        if hit is not None:
            return hit
    mask = jax.ShapeDtypeStruct((1, length), jnp.int32)

    # abstract runs close over the model: a plain function is no pytree argument
    def full(i, a, p):
        kw = _kwargs(plain, a, p)
        return logits_of(model.apply(model.params, i, **kw) if structured else model(i, **kw))

    try:
        shape = jax.eval_shape(full, ids, mask, mask).shape
    except TypeError as err:
        if "keyword" in str(err) or "argument" in str(err):
            raise TypeError(
                "model: calling it as model(input_ids"
                + "".join(f", {k}=..." for k in kw_names)
                + f") failed: {err}; set extra_inputs to the keyword inputs it takes, from "
                f"{list(EXTRA_INPUTS)}"
            ) from err
        raise
    if shape[:2] != (1, length):
        raise ValueError(
            f"model: expected logits of shape (N, S, vocab) = (1, {length}, vocab) for "
            f"input_ids of shape (1, {length}), got {tuple(shape)}"
        )
    plain = Call(structured, kw_names, None, int(shape[-1]))
    call = plain
    if structured and logits_layer is not None:
        head = _find_head(model, plain, ids, mask, logits_layer)
        if head is not None:
            call = Call(True, kw_names, head, int(shape[-1]))
    if key is not None:
        _HEADS.put(key, call)
    return call


def _find_head(model: Any, plain: Call, ids, mask, logits_layer: str) -> str | None:
    seen: list[tuple[Any, Any, Any]] = []

    def record(layer, layer_fn, p, *xs):
        out = layer_fn(p, *xs)
        seen.append((layer, xs, out))
        return out

    result: dict[str, Any] = {}

    def run(i, a, p):
        out = logits_of(model.apply(model.params, i, intercept=record, **_kwargs(plain, a, p)))
        last = seen[-1] if seen else None
        if last is not None:
            layer, xs, lout = last
            result["name"] = layer.name
            result["kind"] = layer.kind
            result["is_output"] = lout is out
            result["in_shape"] = tuple(xs[0].shape) if xs and hasattr(xs[0], "shape") else None
        result["names"] = [s[0].name for s in seen]
        return out

    jax.eval_shape(run, ids, mask, mask)
    length = ids.shape[1]
    if logits_layer == "auto":
        ok = (
            result.get("is_output")
            and result.get("kind") == "linear"
            and result.get("in_shape") is not None
            and len(result["in_shape"]) == 3
            and result["in_shape"][:2] == (1, length)
        )
        if not ok:
            return None
        head = result["name"]
    else:
        if logits_layer not in result.get("names", []):
            shown = ", ".join(repr(n) for n in result.get("names", [])[-6:])
            raise KeyError(
                f"logits_layer {logits_layer!r} is not a layer of the model; its last layers "
                f"are: {shown}"
            )
        if logits_layer != result.get("name") or not result.get("is_output"):
            raise ValueError(
                f"logits_layer {logits_layer!r} must be the last layer run and make the model's "
                f"output (the vocabulary projection), but the output comes from "
                f"{result.get('name')!r}"
                + ("" if result.get("is_output") else " followed by other operations")
                + "; pass logits_layer=None to compute the full logits"
            )
        head = logits_layer
    # the sliced run must give (N, P, V)
    at = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    call = Call(True, plain.kw_names, head, plain.vocab)
    try:
        shape = jax.eval_shape(
            lambda i, a, p, t: call_logits(model, call, i, a, p, t), ids, mask, mask, at
        ).shape
    except Exception as err:  # noqa: BLE001 - the model cannot run on a subset of positions
        if logits_layer != "auto":
            raise ValueError(
                f"logits_layer {logits_layer!r}: the model fails when that layer sees only the "
                f"scored positions ({type(err).__name__}: {err}); pass logits_layer=None"
            ) from err
        return None
    if shape[:2] != (1, 2):
        if logits_layer != "auto":
            raise ValueError(
                f"logits_layer {logits_layer!r}: feeding it 2 positions gave logits of shape "
                f"{tuple(shape)}, not (1, 2, vocab); pass logits_layer=None"
            )
        return None
    return head


# ------------------------------------------------------------------------------ layouts
def padded_length(
    needed: int, model: Any, max_length: int | None, *, what: str = "prompt + target"
) -> int:
    """The sequence length to pad to: the model's fixed length, ``max_length``, or
    ``needed`` rounded up to a multiple of 16 (so similar prompts share programs)."""
    fixed = static_length(model)
    if max_length is not None:
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, (int, np.integer))
            or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        max_length = int(max_length)
        if fixed is not None and max_length != fixed:
            raise ValueError(
                f"max_length={max_length}, but the model was exported for sequences of length "
                f"{fixed} only; pass max_length={fixed} (or None), or export it at "
                f"{max_length}"
            )
    length = max_length if max_length is not None else fixed
    if length is None:
        return max(16, -(-needed // 16) * 16)
    if needed > length:
        source = "max_length" if max_length is not None else "the model's exported length"
        raise ValueError(
            f"{what} needs {needed} tokens, more than {source} ({length}); shorten them, or "
            f"convert the model with longer example inputs (the bridge fixes the sequence "
            f"length at export)"
        )
    return length


def layout(prompts: Sequence[np.ndarray], tgt: np.ndarray, length: int, padding: str) -> dict:
    """Pack prompts followed by the target into (K, length) rows.

    Returns numpy arrays: ``ids``, ``mask`` (1 on real tokens), ``pos`` (position ids:
    0, 1, ... from the first real token), ``at`` (K, T): the positions whose logits predict
    the target tokens, and ``start`` (K,): where each prompt begins.
    """
    k, t = len(prompts), len(tgt)
    ids = np.zeros((k, length), np.int32)
    mask = np.zeros((k, length), np.int32)
    at = np.zeros((k, t), np.int32)
    start = np.zeros((k,), np.int32)
    for r, p in enumerate(prompts):
        lp = len(p)
        s = 0 if padding == "right" else length - lp - t
        ids[r, s : s + lp] = p
        ids[r, s + lp : s + lp + t] = tgt
        mask[r, s : s + lp + t] = 1
        at[r] = s + lp - 1 + np.arange(t)
        start[r] = s
    if padding == "right":
        pos = np.broadcast_to(np.arange(length, dtype=np.int32), (k, length)).copy()
    else:
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return {"ids": ids, "mask": mask, "pos": pos, "at": at, "start": start}


# ------------------------------------------------------------------------------ pytrees
@_caching.model_pytree(
    ["model", "ids", "mask", "pos", "at", "tgt", "sel", "fill"],
    static=["call", "per_token", "prob"],
)
class TokenCoalitions:
    """``fn(x (N, F)) -> scores``: tokens at ``sel`` whose ``x != 1`` take the id ``fill``.

    Captum's ``TextTokenInput.to_model_input`` followed by the scored forward pass.
    """

    def __init__(self, model, call, ids, mask, pos, at, tgt, sel, fill, per_token, prob):
        self.model, self.call = model, call
        self.ids, self.mask, self.pos, self.at, self.tgt = ids, mask, pos, at, tgt
        self.sel, self.fill = sel, fill
        self.per_token, self.prob = per_token, prob

    def __call__(self, x: jax.Array) -> jax.Array:
        n = x.shape[0]
        ids = jnp.broadcast_to(self.ids, (n, self.ids.shape[1]))
        cur = ids[:, self.sel]
        ids = ids.at[:, self.sel].set(jnp.where(x != 1, self.fill, cur))
        mask = jnp.broadcast_to(self.mask, ids.shape)
        pos = jnp.broadcast_to(self.pos, ids.shape)
        lp = token_log_probs(self.model, self.call, ids, mask, pos, self.at, self.tgt)
        return outputs(lp, self.per_token, self.prob)


@_caching.model_pytree(
    ["model", "rows", "ids", "mask", "pos", "at", "tgt"], static=["call", "per_token", "prob"]
)
class TableCoalitions:
    """``fn(x (N, F)) -> scores`` from pre-tokenized coalitions.

    ``rows`` (K, F) lists the coalitions (True: the feature takes its value, as ``x == 1``)
    whose prompts were tokenized on the host into ``ids``/``mask``/``pos``/``at`` (K, ...).
    A coalition not in the table scores NaN (the caller checks: never a silent wrong value).
    """

    def __init__(self, model, call, rows, ids, mask, pos, at, tgt, per_token, prob):
        self.model, self.call = model, call
        self.rows, self.ids, self.mask, self.pos, self.at, self.tgt = rows, ids, mask, pos, at, tgt
        self.per_token, self.prob = per_token, prob

    def __call__(self, x: jax.Array) -> jax.Array:
        on = x == 1
        eq = jnp.all(on[:, None, :] == self.rows[None], axis=-1)  # (N, K)
        idx = jnp.argmax(eq, axis=1)
        found = jnp.any(eq, axis=1)
        lp = token_log_probs(
            self.model,
            self.call,
            self.ids[idx],
            self.mask[idx],
            self.pos[idx],
            self.at[idx],
            self.tgt,
        )
        out = outputs(lp, self.per_token, self.prob)
        found = found[:, None] if out.ndim == 2 else found
        return jnp.where(found, out, jnp.nan)


@_caching.model_pytree(["model", "mask", "pos", "at", "tgt"], static=["call"])
class TargetModel:
    """A structured model whose output is the target tokens' log-probabilities (N, T).

    Its layers are the wrapped model's, so layer methods (layer integrated gradients,
    gradient x activation) tap them; ``apply`` composes their interceptor with the
    logits-layer slicing.
    """

    def __init__(self, model, call, mask, pos, at, tgt):
        self.model, self.call = model, call
        self.mask, self.pos, self.at, self.tgt = mask, pos, at, tgt

    @property
    def params(self) -> Any:
        """The wrapped model's parameters."""
        return self.model.params

    @property
    def layers(self) -> Mapping[str, Any]:
        """The wrapped model's layers."""
        return self.model.layers

    def apply(self, params: Any, ids: jax.Array, intercept: Callable[..., Any] | None = None):
        mask = jnp.broadcast_to(self.mask, ids.shape)
        pos = jnp.broadcast_to(self.pos, ids.shape)
        return token_log_probs(
            self.model,
            self.call,
            ids,
            mask,
            pos,
            self.at,
            self.tgt,
            params=params,
            intercept=intercept,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.apply(self.params, ids)


# ------------------------------------------------------------------------------ generation
@_caching.cached_jit(("model", "call"))
def _next_token(*, model, call, ids, mask, pos, cur):
    at = jnp.reshape(cur - 1, (1, 1)).astype(jnp.int32)
    logits = call_logits(model, call, ids, mask, pos, at)
    return jnp.argmax(logits[0, 0]).astype(jnp.int32)


def generate(
    model: Any,
    call: Call,
    prompt: np.ndarray,
    length: int,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    show_progress: bool,
) -> np.ndarray:
    """Greedy continuation of ``prompt`` (at most ``max_new_tokens``, stopping after an end
    token) in a right-padded buffer of fixed ``length``: one compiled program serves every
    step (the current length is traced)."""
    from jaxattr._progress import progress

    eos = (
        set()
        if eos_token_id is None
        else ({int(eos_token_id)} if np.ndim(eos_token_id) == 0 else {int(e) for e in eos_token_id})
    )
    lp = len(prompt)
    ids = np.zeros((1, length), np.int32)
    ids[0, :lp] = prompt
    mask = np.zeros((1, length), np.int32)
    pos = np.arange(length, dtype=np.int32)[None]
    out: list[int] = []
    dev_ids = jnp.asarray(ids)
    for step in progress(range(max_new_tokens), desc="generate", enabled=show_progress):
        cur = lp + step
        mask[0, :cur] = 1
        tok = int(
            _next_token(
                model=model,
                call=call,
                ids=dev_ids,
                mask=jnp.asarray(mask),
                pos=jnp.asarray(pos),
                cur=jnp.asarray(cur, jnp.int32),
            )
        )
        out.append(tok)
        if tok in eos:
            break
        if cur < length:
            dev_ids = dev_ids.at[0, cur].set(tok)
    return np.asarray(out, np.int32)


# ------------------------------------------------------------------------------ gradients
@_caching.cached_jit(("model", "inputs", "tap", "integrate"))
def _gradient_chunk(*, model, inputs, tap, x, baselines, alphas, weights, integrate):
    """Per target token, ``sum_s weights[s] * d log p_t / d a`` at the layer activations
    ``a = ab + alphas[s] (ax - ab)`` (``integrate``) or at ``ax``: (T, *act.shape).

    The steps are one ``vmap``; each runs the model forward once and takes the backward
    pass of every target token from it (a ``vmap`` over one-hot cotangents). This nesting
    (steps outside, targets inside) shares each step's forward pass among the targets
    (``for_each_target`` around ``layer_integrated_gradients`` runs one per target).
    """
    from jaxattr import _taps

    params = model.params
    key = tap.key
    _, acts = _taps.run_tapped(model, params, inputs, x, (), {}, (tap,))
    ax = acts[key]
    ab = ax
    if integrate:
        _, acts_b = _taps.run_tapped(model, params, inputs, baselines, (), {}, (tap,))
        ab = acts_b[key]
    n_targets = model.tgt.shape[0]

    def per_step(alpha):
        replace = {key: ab + alpha.astype(ax.dtype) * (ax - ab)} if integrate else None

        def out(delta):
            y, _ = _taps.run_tapped(
                model, params, inputs, x, (), {}, (tap,), perturb={key: delta}, replace=replace
            )
            return y[0]  # (T,): one prompt

        y, vjp = jax.vjp(out, jnp.zeros_like(ax))
        return jax.vmap(lambda c: vjp(c)[0])(jnp.eye(n_targets, dtype=y.dtype))

    grads = jax.vmap(per_step)(alphas)  # (steps, T, *act.shape)
    total = jnp.tensordot(weights.astype(grads.dtype), grads, axes=1)
    return total, (ax - ab) if integrate else ax


def layer_gradients_per_target(
    model: TargetModel,
    layer: str,
    x: jax.Array,
    baselines: jax.Array | None,
    alphas: np.ndarray,
    weights: np.ndarray,
    batch_size: int | None,
    show_progress: bool,
    multiply_by_inputs: bool = True,
) -> np.ndarray:
    """Integrated (``baselines`` given) or plain layer gradients x activation differences
    for every target token of ``model`` (a :class:`TargetModel` on one prompt ``x``
    (1, S)): (T, 1, *act.shape[1:]); without ``multiply_by_inputs`` the gradients alone.

    ``batch_size`` steps per compiled call (default: as many as the memory budget allows
    for the forward pass and the backward pass of every target token).
    """
    from jaxattr import _core, _taps
    from jaxattr._progress import progress, sync

    tap = _taps.resolve_single(model, layer)
    inputs = _core.as_inputs(x, need_float=False)
    integrate = baselines is not None
    n = len(alphas)
    unit = None
    if batch_size is None:
        _, (every, _) = _caching.probe(lambda m, ids: m.apply(m.params, ids), (model,), x)
        unit = 2 * every * (1 + int(model.tgt.shape[0]))
    chunks = _core.batched_chunks(n, batch_size, unit_bytes=unit)
    total = diff = None
    for start, stop in progress(chunks, desc="layer gradients", enabled=show_progress):
        part, diff = _gradient_chunk(
            model=model,
            inputs=inputs,
            tap=tap,
            x=x,
            baselines=x if baselines is None else baselines,
            alphas=jnp.asarray(alphas[start:stop], jnp.float32),
            weights=jnp.asarray(weights[start:stop], jnp.float32),
            integrate=integrate,
        )
        total = part if total is None else total + part
        sync(total, show_progress)
    return np.asarray(total * diff[None] if multiply_by_inputs else total, np.float32)
