"""Compiled programs and memoized probes, cached in one place.

Models are pytrees. A bridged model, a Flax adapter, a model with rules attached or a
``jax.tree_util.Partial(apply, params)`` carries its weights as array leaves; a method's
compiled program takes those arrays as *arguments*, so new weights are always seen and
never recompile. Only the rest of the model (its graph, its Python functions) and the
method's options are static: they key the cache, by type and value, so ``1`` and
``np.float32(1.0)`` never share a program.

A plain Python function is a static leaf: arrays it closes over are fixed at its first
call, exactly as :func:`jax.jit` treats them. Pass weights that change as a pytree
(``jax.tree_util.Partial(apply, params)``, a bridged model, a Flax adapter) instead.

Every cache is made here: a bounded LRU (:class:`LRU`, :func:`lru`, :func:`cached_jit`) or
a table per live graph object (:class:`WeakTable`), each registered with
:func:`clear_caches`; none grows without bound, and :func:`trace_count` counts how often a
method core was traced.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LRU",
    "Partition",
    "WeakTable",
    "cached_jit",
    "clear_caches",
    "compiler_options",
    "jit",
    "lru",
    "partition",
    "trace_count",
]

_CACHES: weakref.WeakSet = weakref.WeakSet()
_LOCK = threading.Lock()
_TRACES = [0]


class LRU:
    """A bounded least-recently-used map, emptied by :func:`clear_caches`."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        _CACHES.add(self)

    def get(self, key: Hashable) -> Any:
        with _LOCK:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> Any:
        with _LOCK:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with _LOCK:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def lru(maxsize: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``functools.lru_cache`` for factories, registered with :func:`clear_caches`.

    Arguments key the cache by type and value (:func:`static_key`: ``1`` and ``1.0`` are
    two entries). Unhashable arguments are not an error: the factory then runs uncached.
    """

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        cache = LRU(maxsize)

        @functools.wraps(factory)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = (
                tuple(static_key(a) for a in args),
                tuple((k, static_key(v)) for k, v in sorted(kwargs.items())),
            )
            try:
                hash(key)
            except TypeError:
                return factory(*args, **kwargs)
            hit = cache.get(key)
            return hit if hit is not None else cache.put(key, factory(*args, **kwargs))

        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper

    return decorator


class WeakTable(weakref.WeakKeyDictionary):
    """Values kept per live object (a bridged model's shared graph), emptied by
    :func:`clear_caches`; an entry goes when its key object does. Never keyed by weights."""

    __hash__ = object.__hash__  # registered by identity (two empty tables are two caches)
    __eq__ = object.__eq__

    def __init__(self) -> None:
        super().__init__()
        _CACHES.add(self)


def clear_caches() -> None:
    """Empty every jaxattr cache (compiled programs, shape probes, rule factories).

    JAX's own caches are cleared too (:func:`jax.clear_caches`). Nothing is needed for
    correctness: use it to return memory after explaining many different models.

    Example:
        >>> import jaxattr
        >>> jaxattr.clear_caches()
    """
    for cache in list(_CACHES):
        cache.clear()
    jax.clear_caches()


def trace_count() -> int:
    """How many times a method core has been traced (compiled) in this process."""
    return _TRACES[0]


# --------------------------------------------------------------------------------------
# Static keys and partitions
# --------------------------------------------------------------------------------------

_DYNAMIC = object()


def _is_dynamic(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, jax.core.Tracer))


def static_key(value: Any) -> Any:
    """A key for a static value, by type and value.

    Python and NumPy scalars compare by type and exact bits (``1``, ``1.0`` and
    ``np.float32(1.0)`` are three keys); containers recurse; other objects use their own
    ``__eq__`` (identity for functions) under their type.
    """
    if value is None or isinstance(value, (bool, str, bytes)):
        return (type(value), value)
    if isinstance(value, (int, float, complex)):
        return (type(value), repr(value))
    if isinstance(value, np.generic):
        return (type(value), value.tobytes())
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(static_key(v) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple((static_key(k), static_key(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return [value]  # unhashable on purpose: a NumPy array in a static part is not cached
    return (type(value), value)


class Partition:
    """The static part of a pytree: its structure and its non-array leaves.

    Two partitions are equal exactly when their pytrees differ only in the *values* of
    their array leaves (same structure, same static leaves by type and value), i.e. when
    one compiled program serves both.
    """

    __slots__ = ("_hash", "key", "statics", "treedef")

    def __init__(self, treedef: Any, statics: Sequence[Any]):
        self.treedef = treedef
        self.statics = tuple(statics)
        self.key = (treedef, tuple(_DYNAMIC if s is _DYNAMIC else static_key(s) for s in statics))
        self._hash = None

    def combine(self, dynamic: Sequence[Any]) -> Any:
        """Rebuild the pytree from this static part and its array leaves."""
        it = iter(dynamic)
        leaves = [next(it) if s is _DYNAMIC else s for s in self.statics]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def placeholder(self) -> Any:
        """The pytree with ``None`` for every array: its structure, none of its weights."""
        return self.combine([None] * sum(s is _DYNAMIC for s in self.statics))

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self.key)
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Partition) and self.key == other.key


def partition(tree: Any, *, abstract: bool = False) -> tuple[Partition, list[Any]]:
    """Split ``tree`` into its static :class:`Partition` and its array leaves.

    With ``abstract``, :class:`jax.ShapeDtypeStruct` leaves count as arrays too (a
    shape probe's stand-ins for arrays whose values do not matter, see :func:`probe`).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr._caching import partition
        >>> part, arrays = partition({"w": jnp.ones(2), "name": "dense"})
        >>> len(arrays), part == partition({"w": jnp.zeros(2), "name": "dense"})[0]
        (1, True)
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    statics, dynamic = [], []
    for leaf in leaves:
        if _is_dynamic(leaf) or (abstract and isinstance(leaf, jax.ShapeDtypeStruct)):
            statics.append(_DYNAMIC)
            dynamic.append(leaf)
        else:
            statics.append(leaf)
    return Partition(treedef, statics), dynamic


def is_hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------------------
# Compiled method cores
# --------------------------------------------------------------------------------------


def _traced(core: Callable[..., Any], part: Partition, dynamic: list, kwargs: dict) -> Any:
    _TRACES[0] += 1
    return core(**part.combine(dynamic), **kwargs)


def cached_jit(static_argnames: Sequence[str], maxsize: int = 16):
    """Compile a keyword-only method core, caching programs by static structure only.

    The arguments named in ``static_argnames`` (the model, the method's options) are
    partitioned: their array leaves (a model's weights) become arguments of the compiled
    program, the rest keys the cache by type and value. Other arguments are traced as
    usual. A static part that cannot be hashed still works: it is compiled on every call.

    Args:
        static_argnames: The keyword arguments that hold models and options.
        maxsize: Compiled variants kept per core (least recently used dropped first).
    """
    names = tuple(static_argnames)

    def decorator(core: Callable[..., Any]) -> Callable[..., Any]:
        cache = LRU(maxsize)

        @functools.wraps(core)
        def wrapper(**kwargs: Any) -> Any:
            statics = {k: kwargs.pop(k) for k in names}
            part, dynamic = partition(statics)
            if not is_hashable(part):
                return jit(functools.partial(_traced, core, part))(dynamic, kwargs)
            jitted = cache.get(part)
            if jitted is None:
                jitted = cache.put(part, jit(functools.partial(_traced, core, part)))
            return jitted(dynamic, kwargs)

        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper

    return decorator


# --------------------------------------------------------------------------------------
# Compiling: jax.jit with the options jaxattr needs to be right
# --------------------------------------------------------------------------------------

# XLA's CPU backend (jaxlib 0.10) hands fusions of dots and reductions to the YNNPACK
# library by default, and both fusions give silent wrong answers:
# - the reduce fusion, on a reduction over a broadcast product that ``vmap`` over targets
#   of a ``vmap`` over steps of a gradient produces (``_reduce_fusion_case`` in
#   tests/test_trust.py: 1 target in 5 is 34% off);
# - the dot fusion, on a dot fed by a broadcast constant (``jnp.ones((64, 64))`` in a
#   function's body): integrated gradients at 32 steps returned values from 7.7e3 to
#   2.4e33 where the answer is 67, different on each run (uninitialised memory).
# Op-by-op evaluation is right in both. YNNPACK is kept for single dots, which is where its
# speed is: with it off entirely integrated gradients ran 2.5x slower on the seed CNN;
# with single dots only, as fast as the default (bench_methods.py --quick, quiet machine).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_NESTED = "top-level `jax.jit`"


@functools.cache
def _options_for(backend: str) -> tuple[tuple[str, str], ...]:
    if backend != "cpu":
        return ()
    try:  # an XLA without the option (older or newer than the bug) rejects the name
        jax.jit(lambda v: v + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 - any refusal means: compile with the defaults
        return ()
    return tuple(_CPU_OPTIONS.items())


def compiler_options() -> dict[str, str]:
    """The XLA options jaxattr compiles its programs with on the default backend.

    On CPU this keeps XLA's YNNPACK library to single dots: with jaxlib 0.10 its reduce
    and dot fusions miscompile some gradient programs (a ``vmap`` over targets of
    integrated gradients came out up to 150% off; a dot of a broadcast constant read
    uninitialised memory). jaxattr applies the options to every
    program it compiles at top level. When you wrap jaxattr calls in your own
    :func:`jax.jit` (or ``grad``, ``scan``, ...), the outermost program decides, so pass
    them there too. Empty on other backends, or where XLA does not know the option.

    Returns:
        A dict for ``jax.jit(..., compiler_options=...)``; empty when none is needed.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: jnp.tanh(x).sum(axis=1, keepdims=True)
        >>> explain = jax.jit(lambda x: jaxattr.saliency(fn, x, target=0),
        ...                   compiler_options=jaxattr.compiler_options())
        >>> explain(jnp.zeros((2, 3))).shape
        (2, 3)
    """
    return dict(_options_for(jax.default_backend()))


def _as_jax(leaf: Any) -> Any:
    """A NumPy array as a JAX array (never a static argument: arrays are unhashable)."""
    return jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf


def jit(fun: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """:func:`jax.jit` compiling with :func:`compiler_options` where it can.

    ``compiler_options`` are only accepted by a top-level program; called inside another
    transformation that stages it (``jax.jit``, ``grad``, ``scan``), the plain program
    is used and the outer program's options apply.

    Args:
        fun: The function to compile.
        **jit_kwargs: Options of :func:`jax.jit` (``static_argnames``, ...).

    Returns:
        A callable with ``fun``'s signature.
    """
    plain = jax.jit(fun, **jit_kwargs)
    safe: list[Any] = []  # made at the first call: importing never starts a backend

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        # Inside another trace, NumPy arrays become JAX arrays here, at the current x64
        # setting: a NumPy float64 passed to a jitted function inside another trace is
        # lowered as a float64 constant once the program was traced with x64 on, and the
        # program then fails to lower with x64 off (jax 0.10.2;
        # tests/test_contract.py::test_float64_under_x64). At the top level jax.jit
        # converts them right, and faster.
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            args, kwargs = jax.tree_util.tree_unflatten(treedef, [_as_jax(a) for a in leaves])
        options = _options_for(jax.default_backend())
        if not options:
            return plain(*args, **kwargs)
        if not safe:
            safe.append(jax.jit(fun, compiler_options=dict(options), **jit_kwargs))
        try:
            return safe[0](*args, **kwargs)
        except ValueError as err:  # staged into an outer program: its options apply
            if _NESTED not in str(err):
                raise
            return plain(*args, **kwargs)

    def cache_size() -> int:
        """Programs compiled so far (both forms), as ``jax.jit``'s ``_cache_size``."""
        return plain._cache_size() + (safe[0]._cache_size() if safe else 0)

    def clear_cache() -> None:
        plain.clear_cache()
        if safe:
            safe[0].clear_cache()

    call.plain = plain  # type: ignore[attr-defined]
    call._cache_size = cache_size  # type: ignore[attr-defined]
    call.clear_cache = clear_cache  # type: ignore[attr-defined]
    return call


_SHAPES = LRU(256)


def _value_bytes(jaxpr: Any, varying: Sequence[bool]) -> tuple[int, int]:
    """``(total, largest)``: bytes of the values a jaxpr computes from its ``varying``
    inputs (nested jaxprs looked into, nothing counted twice), and of the largest one.

    Only values that depend on the varying inputs (the examples, not the weights) grow
    with the expansion of a method. Their total bounds what a forward pass keeps alive
    for its backward pass; a pass with no backward needs a few of the largest at a time.
    """
    dep = {v for v, flag in zip(jaxpr.invars, varying, strict=True) if flag}
    total = largest = 0
    for eqn in jaxpr.eqns:
        flags = [type(v).__name__ != "Literal" and v in dep for v in eqn.invars]
        if not any(flags):
            continue
        inner = [
            getattr(sub, "jaxpr", sub)
            for param in eqn.params.values()
            for sub in (param if isinstance(param, (tuple, list)) else (param,))
        ]
        inner = [j for j in inner if hasattr(j, "eqns")]
        if inner:
            for j in inner:
                sub_flags = flags if len(j.invars) == len(flags) else [True] * len(j.invars)
                t, m = _value_bytes(j, sub_flags)
                total, largest = total + t, max(largest, m)
        else:
            for v in eqn.outvars:
                aval = getattr(v, "aval", None)
                if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                    size = int(np.prod(aval.shape, dtype=np.int64)) * aval.dtype.itemsize
                    total, largest = total + size, max(largest, size)
        dep.update(eqn.outvars)
    return total, largest


def probe(fn: Callable[..., Any], fixed: tuple, varying: Any) -> tuple[Any, tuple[int, int]]:
    """``(jax.eval_shape(fn, *fixed, varying), (total, largest))``, memoized.

    ``fixed`` may hold pytrees (a model): their arrays enter as shapes, so the memo holds
    no arrays and a model with new weights of the same shapes hits it. A
    :class:`jax.ShapeDtypeStruct` leaf stands for an array of that shape (see
    :func:`abstract_numpy`). The second part is the size of the values computed from
    ``varying`` (see :func:`_value_bytes`), what :func:`jaxattr._core.batched_chunks`
    sizes chunks by.
    """
    part, fixed_dyn = partition((fn, fixed), abstract=True)
    vpart, var_dyn = partition(varying, abstract=True)
    flags = [False] * len(fixed_dyn) + [True] * len(var_dyn)

    def run(fdyn, vdyn):
        f, fx = part.combine(fdyn)
        return f(*fx, vpart.combine(vdyn))

    def shapes(dyn):
        return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in dyn]

    if not (is_hashable(part) and is_hashable(vpart)):
        closed, out = jax.make_jaxpr(run, return_shape=True)(shapes(fixed_dyn), shapes(var_dyn))
        return out, (0, 0)
    spec = tuple((tuple(a.shape), str(a.dtype)) for a in (*fixed_dyn, *var_dyn))
    key = (part, vpart, spec)
    hit = _SHAPES.get(key)
    if hit is None:
        closed, out = jax.make_jaxpr(run, return_shape=True)(shapes(fixed_dyn), shapes(var_dyn))
        hit = _SHAPES.put(key, (out, _value_bytes(closed.jaxpr, flags)))
    return hit


def abstract_numpy(tree: Any) -> Any:
    """``tree`` with each numeric NumPy array replaced by its :class:`jax.ShapeDtypeStruct`.

    For the extra inputs of a shape probe (``args``, ``kwargs``): a compiled method core
    traces them as arrays anyway, so only their shapes matter, and :func:`probe` then
    memoizes by shape instead of tracing the model again on every call (a NumPy leaf is
    otherwise static and unhashable).
    """

    def leaf(a: Any) -> Any:
        if isinstance(a, np.ndarray) and a.dtype.kind in "biufc":
            return jax.ShapeDtypeStruct(a.shape, a.dtype)
        return a

    return jax.tree_util.tree_map(leaf, tree)


# --------------------------------------------------------------------------------------
# Wrapper models as pytrees
# --------------------------------------------------------------------------------------


class _Static:
    """The non-leaf attributes of a wrapper model; equal when its ``static`` ones are.

    Attributes not named in ``static`` are per-instance caches (a discovered layer
    table, a built interceptor): carried to the copies, never part of the key.
    """

    __slots__ = ("attrs", "key")

    def __init__(self, cls: type, attrs: dict[str, Any], static: Sequence[str]):
        self.attrs = attrs
        self.key = (cls, tuple(static_key(attrs.get(n)) for n in static))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self.key == other.key


def model_pytree(children: Sequence[str], static: Sequence[str] = ()) -> Callable[[type], type]:
    """Register a wrapper model class as a pytree whose leaves live in ``children``.

    A model that wraps another (rules attached, canonizers, one neuron) names the
    attributes holding models or arrays; they are flattened, so the wrapped weights are
    traced as arguments. The attributes named in ``static`` (compared by type and value)
    key compiled programs; any other attribute is a cache carried along.
    """
    children, static = tuple(children), tuple(static)

    def decorate(cls: type) -> type:
        def flatten_with_keys(self):
            attrs = {k: v for k, v in self.__dict__.items() if k not in children}
            kids = [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in children]
            return kids, _Static(cls, attrs, static)

        def unflatten(aux, kids):
            obj = object.__new__(cls)
            obj.__dict__.update(aux.attrs)
            for name, kid in zip(children, kids, strict=True):
                obj.__dict__[name] = kid
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten)
        return cls

    return decorate
