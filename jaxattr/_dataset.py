"""Dataset-scale attribution: stream batches, shard them over devices, write as you go.

:func:`attribute_dataset` runs any jaxattr method over an iterable of batches. Each batch
is placed on a ``jax.sharding.Mesh`` with its batch axis split over the devices (all
local devices by default), so the method's compiled program runs data-parallel; results
are written to a directory of ``.npy`` shards with a JSON index as soon as each batch is
done, so an interrupted run resumes where it stopped. The index holds a fingerprint of
everything that determines the results (method, options, target, model structure and
weights, input layout, key), and a resumed run with any difference raises
:class:`ResumeMismatchError` instead of mixing results. :class:`AttributionStore` reads
such a directory lazily.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import math
import os
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxattr._core import PyTree
from jaxattr._progress import progress

__all__ = ["AttributionStore", "ResumeMismatchError", "attribute_dataset"]

_FORMAT = "jaxattr-dataset/2"


class ResumeMismatchError(ValueError):
    """``attribute_dataset(resume=True)`` found results of a different run in ``out``.

    Raised when the stored fingerprint (method, options, target, model structure and
    weights, input layout, key), a stored batch's size or, for a random method, the
    padding of the stored draws differs from this run's, and when the index is too old to
    hold a fingerprint. Resuming would append results of another meaning.

    Attributes:
        fields: Each differing field mapped to ``(old, new)``: the stored and this run's
            digests for fingerprint fields (None where one side lacks the field), example
            counts for ``"batch <i>"`` and row multiples for ``"padding"``.
    """

    def __init__(self, message: str, fields: Mapping[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.fields = dict(fields)


# --------------------------------------------------------------------------------------
# Result structure, stored as JSON
# --------------------------------------------------------------------------------------


def _describe(tree: PyTree) -> Any:
    """A JSON description of a result's structure: arrays, tuples, lists, dicts."""
    if isinstance(tree, tuple):
        return {"tuple": [_describe(t) for t in tree]}
    if isinstance(tree, list):
        return {"list": [_describe(t) for t in tree]}
    if isinstance(tree, dict):
        return {"dict": {str(k): _describe(tree[k]) for k in sorted(tree)}}
    if hasattr(tree, "shape"):
        return "array"
    raise TypeError(
        f"attribute_dataset can store arrays, tuples, lists and dicts of arrays; the method "
        f"returned a {type(tree).__name__}"
    )


def _rebuild(desc: Any, leaves: Iterator[Any]) -> PyTree:
    if desc == "array":
        return next(leaves)
    if "tuple" in desc:
        return tuple(_rebuild(d, leaves) for d in desc["tuple"])
    if "list" in desc:
        return [_rebuild(d, leaves) for d in desc["list"]]
    return {k: _rebuild(d, leaves) for k, d in desc["dict"].items()}


def _leaves(tree: PyTree, desc: Any) -> list:
    if desc == "array":
        return [tree]
    if "tuple" in desc or "list" in desc:
        items = desc.get("tuple", desc.get("list"))
        return [leaf for t, d in zip(tree, items, strict=False) for leaf in _leaves(t, d)]
    return [leaf for k, d in desc["dict"].items() for leaf in _leaves(tree[k], d)]


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


def _index_name(process_index: int, process_count: int) -> str:
    return "index.json" if process_count == 1 else f"index-p{process_index:05d}.json"


def _fsync_dir(path: str) -> None:
    """Make a rename in directory ``path`` durable (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in its directory, fsync-ed, then renamed."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path: str, data: dict) -> None:
    _atomic_write(path, lambda f: json.dump(data, f, indent=1, sort_keys=True), mode="w")
    _fsync_dir(os.path.dirname(path) or ".")


def _save_npy(path: str, array: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, array))


def _shards_intact(out: str, entry: Mapping[str, Any]) -> bool:
    """Whether every file of a stored batch is present, readable and of its recorded shape."""
    recorded = entry.get("leaves") or [None] * len(entry["files"])
    for name, rec in zip(entry["files"], recorded, strict=False):
        try:
            a = np.load(os.path.join(out, name), mmap_mode="r")
        except Exception:  # missing, truncated, not an .npy
            return False
        shape, dtype = list(a.shape), str(a.dtype)
        del a
        if not shape or shape[0] != entry["n"]:
            return False
        if rec is not None and (shape != rec["shape"] or dtype != rec["dtype"]):
            return False
    return True


class AttributionStore:
    """A lazy reader of a directory written by :func:`attribute_dataset`.

    Batches are read on demand, memory-mapped (``np.load(mmap_mode="r")``); the index
    files of every process of a multi-host run are merged.

    Args:
        path: The ``out`` directory of :func:`attribute_dataset`.

    Attributes:
        batches: Each stored batch's position mapped to its index entry (``n``, ``files``
            and each file's ``shape`` and ``dtype`` under ``leaves``).
        structure: The result's structure (arrays, tuples, lists, dicts).
        method: The method's name.
        fingerprint: The run's fingerprint, ``{field: sha256}`` (None for indexes written
            before jaxattr recorded one).

    Raises:
        FileNotFoundError: ``path`` holds no index.

    Example:
        >>> import jax.numpy as jnp, jaxattr, tempfile
        >>> out = tempfile.mkdtemp()
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> _ = jaxattr.attribute_dataset(jaxattr.gradient, fn, [jnp.ones((2, 3))],
        ...                               out=out, show_progress=False)
        >>> store = jaxattr.AttributionStore(out)
        >>> len(store), store.load().shape
        (2, (2, 3))
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        names = (
            sorted(
                n for n in os.listdir(self.path) if n.startswith("index") and n.endswith(".json")
            )
            if os.path.isdir(self.path)
            else []
        )
        if not names:
            raise FileNotFoundError(
                f"path must be an attribute_dataset output directory with an index.json, got "
                f"{self.path!r}"
            )
        self.batches: dict[int, dict] = {}
        self.structure: Any = None
        self.method: str | None = None
        self.fingerprint: dict[str, str] | None = None
        for name in names:
            with open(os.path.join(self.path, name)) as f:
                index = json.load(f)
            self.structure = self.structure or index.get("structure")
            self.method = self.method or index.get("method")
            self.fingerprint = self.fingerprint or index.get("fingerprint")
            self.batches.update({int(k): v for k, v in index["batches"].items()})

    @property
    def batch_indices(self) -> list[int]:
        """The stored batches' positions in the input stream, ascending."""
        return sorted(self.batches)

    def __len__(self) -> int:
        """The number of stored examples."""
        return sum(b["n"] for b in self.batches.values())

    def batch(self, i: int) -> PyTree:
        """The result of batch ``i`` (its position in the input stream), memory-mapped."""
        if i not in self.batches:
            raise KeyError(f"batch {i} is not stored; stored: {self.batch_indices}")
        files = self.batches[i]["files"]
        leaves = iter(np.load(os.path.join(self.path, f), mmap_mode="r") for f in files)
        return _rebuild(self.structure, leaves)

    def __iter__(self) -> Iterator[PyTree]:
        """The stored batches' results, in stream order."""
        return (self.batch(i) for i in self.batch_indices)

    def load(self) -> PyTree:
        """All stored results, concatenated along the batch axis (in memory)."""
        parts = [_leaves(b, self.structure) for b in self]
        if not parts:
            raise ValueError(f"no batches are stored in {self.path!r}")
        leaves = [np.concatenate(ls, axis=0) for ls in zip(*parts, strict=False)]
        return _rebuild(self.structure, iter(leaves))

    def __repr__(self) -> str:
        return (
            f"AttributionStore({self.path!r}, method={self.method!r}, "
            f"batches={len(self.batches)}, examples={len(self)})"
        )


# --------------------------------------------------------------------------------------
# The fingerprint of a run
# --------------------------------------------------------------------------------------

_MAX_DEPTH = 8
# modules whose functions hold no model weights (not scanned for arrays)
_LIBRARY_ROOTS = ("builtins", "jax", "jaxlib", "numpy", "scipy", "functools")


def _qualname(obj: Any) -> str:
    """``module.qualname`` of a function, class or other named callable."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name or type(obj).__qualname__}"


def _is_array(v: Any) -> bool:
    return isinstance(v, (np.ndarray, jax.Array))


def _host_array(a: Any) -> tuple[str, list[int], bytes | None]:
    """``(dtype, shape, bytes)`` of an array; PRNG keys by their key data."""
    dtype = str(a.dtype)
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    try:
        data = np.ascontiguousarray(np.asarray(a)).tobytes()
    except Exception:  # e.g. a multi-host array this process cannot address
        data = None
    return dtype, [int(d) for d in np.shape(a)], data


def _array_spec(a: Any, hash_arrays: bool) -> dict:
    dtype, shape, data = _host_array(a)
    spec: dict = {"array": dtype, "shape": shape}
    if hash_arrays:
        spec["sha256"] = "unreadable" if data is None else hashlib.sha256(data).hexdigest()
    return spec


def _spec(v: Any, hash_arrays: bool = True, _depth: int = 0, _path: frozenset = frozenset()) -> Any:
    """A stable JSON description of an option value (a method, a keyword, a target).

    Scalars by type and value, arrays by dtype, shape and (``hash_arrays``) the sha256 of
    their bytes, containers and dataclasses item by item, functions by module and
    qualname; jaxattr's own closures (``noise_tunnel``, rule factories) also by the values
    they close over, ``functools.partial`` by its function, args and keywords.
    """
    if v is None or isinstance(v, (bool, str)):
        return [type(v).__name__, v]
    if isinstance(v, enum.Enum):
        return ["enum", _qualname(type(v)), v.name]
    if isinstance(v, (int, float, complex)):
        return [type(v).__name__, repr(v)]
    if isinstance(v, np.generic):
        return [np.dtype(type(v)).name, repr(v.item())]
    if isinstance(v, bytes):
        return ["bytes", hashlib.sha256(v).hexdigest()]
    if _is_array(v):
        return _array_spec(v, hash_arrays)
    if _depth > _MAX_DEPTH or id(v) in _path:
        return ["ref", _qualname(v) if callable(v) else _qualname(type(v))]
    rec = functools.partial(
        _spec, hash_arrays=hash_arrays, _depth=_depth + 1, _path=_path | {id(v)}
    )
    if isinstance(v, functools.partial):  # jax.tree_util.Partial too
        return {
            "partial": rec(v.func),
            "args": [rec(a) for a in v.args],
            "keywords": {str(k): rec(a) for k, a in sorted(v.keywords.items())},
        }
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # a namedtuple
        return {"namedtuple": _qualname(type(v)), "fields": [rec(a) for a in v]}
    if isinstance(v, (tuple, list)):
        return {type(v).__name__: [rec(a) for a in v]}
    if isinstance(v, Mapping):
        items = sorted(((rec(k), rec(a)) for k, a in v.items()), key=lambda kv: json.dumps(kv[0]))
        return {"dict": [list(kv) for kv in items]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        fields = {f.name: rec(getattr(v, f.name, None)) for f in dataclasses.fields(v)}
        return {"dataclass": _qualname(type(v)), "fields": fields}
    if isinstance(v, types.MethodType):
        return {"method": _qualname(v.__func__), "self": _qualname(type(v.__self__))}
    if isinstance(v, types.FunctionType):
        spec: dict = {"function": _qualname(v)}
        if (v.__module__ or "").split(".")[0] == "jaxattr" and v.__closure__:
            spec["closure"] = {
                name: rec(_cell(c))
                for name, c in zip(v.__code__.co_freevars, v.__closure__, strict=True)
            }
        return spec
    if isinstance(v, type):
        return {"class": _qualname(v)}
    if callable(v):
        return {"callable": _qualname(v)}
    return {"object": _qualname(type(v))}


def _cell(c: Any) -> Any:
    try:
        return c.cell_contents
    except ValueError:  # an empty cell
        return None


def _digest(desc: Any) -> str:
    text = json.dumps(desc, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _summary(desc: Any, limit: int = 80) -> str:
    text = desc if isinstance(desc, str) else json.dumps(desc, sort_keys=True, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "params") and not isinstance(obj, (type, types.FunctionType))


def _model_layers(model: Any, x: PyTree) -> list[str]:
    """The model's layer names; a model that finds them on its first call finds them now."""
    layers = getattr(model, "layers", None)
    discover = getattr(model, "discover", None)
    if not layers and callable(discover):
        args = tuple(x) if isinstance(x, tuple) else (x,)
        try:
            layers = discover(*args)
        except Exception:  # a model that cannot trace abstractly: keep what it says
            layers = getattr(model, "layers", None)
    return sorted(str(name) for name in (layers or {}))


def _tree_spec(tree: Any) -> list:
    """``[path, dtype, shape]`` of every array leaf of a pytree (other leaves by type)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in flat:
        if _is_array(leaf):
            out.append([jax.tree_util.keystr(path), str(leaf.dtype), list(np.shape(leaf))])
        else:
            out.append([jax.tree_util.keystr(path), _spec(leaf, hash_arrays=False)])
    return out


def _model_structure(model: Any, x: PyTree, _depth: int = 0) -> Any:
    """What the model computes, without its weights' values."""
    if _is_model(model):
        desc: dict = {"type": _qualname(type(model)), "params": _tree_spec(model.params)}
        if hasattr(model, "layers"):
            desc["layers"] = _model_layers(model, x)
        return desc
    if _depth < _MAX_DEPTH and isinstance(model, functools.partial):
        return {
            "partial": _model_structure(model.func, x, _depth + 1),
            "args": _spec(list(model.args), hash_arrays=False),
            "keywords": _spec(dict(model.keywords), hash_arrays=False),
        }
    if _depth < _MAX_DEPTH and isinstance(model, types.MethodType):
        return {
            "method": _qualname(model.__func__),
            "self": _model_structure(model.__self__, x, _depth + 1),
        }
    if isinstance(model, types.FunctionType):  # jaxattr's closures with what they close over
        return _spec(model, hash_arrays=False)
    leaves = jax.tree_util.tree_leaves(model)
    if leaves and not (len(leaves) == 1 and leaves[0] is model):  # a pytree model (equinox)
        return {"type": _qualname(type(model)), "leaves": _tree_spec(model)}
    if hasattr(model, "__qualname__"):  # a builtin, a jitted function
        return {"callable": _qualname(model)}
    return {"type": _qualname(type(model))}


def _weight_arrays(obj: Any, _depth: int = 0, _seen: set | None = None) -> list:
    """The arrays a model computes with, in a fixed order.

    All array leaves of ``obj.params`` for a structured model; otherwise the array leaves
    of a pytree model, of a ``functools.partial``'s arguments, of a bound method's object,
    and of the closure cells and module globals a plain function refers to (so
    ``lambda x: x @ W`` is fingerprinted by ``W``).
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen or _depth > 3 or isinstance(obj, (type, types.ModuleType)):
        return []
    seen.add(id(obj))
    if _is_array(obj):
        return [obj]
    rec = functools.partial(_weight_arrays, _depth=_depth + 1, _seen=seen)
    if _is_model(obj):
        return [a for a in jax.tree_util.tree_leaves(obj.params) if _is_array(a)]
    if isinstance(obj, functools.partial):
        return rec(obj.func) + [a for v in (obj.args, obj.keywords) for a in _arrays_in(v, rec)]
    if isinstance(obj, types.MethodType):
        return rec(obj.__self__)
    if isinstance(obj, types.FunctionType):
        if (obj.__module__ or "").split(".")[0] in _LIBRARY_ROOTS:
            return []
        values = [_cell(c) for c in obj.__closure__ or ()]
        values += [obj.__globals__[n] for n in _code_names(obj.__code__) if n in obj.__globals__]
        return [a for v in values for a in _arrays_in(v, rec)]
    return _arrays_in(obj, rec, top=True)


def _arrays_in(v: Any, rec: Callable[[Any], list], top: bool = False) -> list:
    """The arrays of a value: its array leaves; models and functions among them recursed."""
    if isinstance(v, (type, types.ModuleType, str, bytes)) or v is None:
        return []
    if _is_array(v):
        return [v]
    try:
        leaves = jax.tree_util.tree_leaves(v)
    except Exception:
        return []
    if len(leaves) == 1 and leaves[0] is v:  # not a pytree
        return [] if top else rec(v) if (callable(v) or _is_model(v)) else []
    return [a for leaf in leaves for a in ([leaf] if _is_array(leaf) else rec(leaf))]


def _code_names(code: types.CodeType) -> list[str]:
    """The global names a function's code (and the code nested in it) refers to."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _code_names(const)
    return list(dict.fromkeys(names))


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for a in _weight_arrays(model):
        dtype, shape, data = _host_array(a)
        h.update(json.dumps([dtype, shape]).encode())
        h.update(b"unreadable" if data is None else data)
    return h.hexdigest()


def _target_spec(kwargs: Mapping[str, Any], target: Any, has_target: bool, n: int) -> Any:
    """The keyword ``target`` by value; per-batch targets by their layout only (data)."""
    desc: dict = {"keyword": _spec(kwargs["target"]) if "target" in kwargs else "absent"}
    if not has_target:
        desc["per_batch"] = "absent"
    elif isinstance(target, list) or (hasattr(target, "shape") and np.ndim(target) >= 1):
        t = np.asarray(target)
        per_example = t.ndim >= 1 and t.shape[0] == n
        desc["per_batch"] = [str(t.dtype), list(t.shape[1:]) if per_example else list(t.shape)]
    else:
        desc["per_batch"] = type(target).__name__
    return desc


def _inputs_spec(x: PyTree) -> Any:
    """The input layout: container type and every leaf's dtype and shape after the batch.

    A numpy and a jax array are the same input, and dtypes are those jax computes in
    (float64 is float32 unless ``jax_enable_x64``).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(x)
    leaves = [
        [
            jax.tree_util.keystr(path),
            str(jax.dtypes.canonicalize_dtype(leaf.dtype)),
            list(np.shape(leaf)[1:]),
        ]
        for path, leaf in flat
    ]
    return {"type": "array" if hasattr(x, "shape") else type(x).__name__, "leaves": leaves}


def _fingerprint(
    method: Callable[..., Any],
    fn: Any,
    options: Mapping[str, Any],
    key: Any,
    x: PyTree,
    target: Any,
    has_target: bool,
    n: int,
) -> tuple[dict[str, str], dict[str, str]]:
    """``(digests, summaries)``: one sha256 and one short readable text per field."""
    descs: dict[str, Any] = {
        "method": _spec(method),
        "target": _target_spec(options, target, has_target, n),
        "model.structure": _model_structure(fn, x),
        "inputs": _inputs_spec(x),
        "key": _spec(key),
    }
    for name, value in options.items():
        if name != "target":
            descs[f"options.{name}"] = _spec(value)
    digests = {field: _digest(desc) for field, desc in descs.items()}
    summaries = {field: _summary(desc) for field, desc in descs.items()}
    digests["model.weights"] = summaries["model.weights"] = _weights_digest(fn)
    return digests, summaries


def _mismatch_message(
    out: str,
    fields: Mapping[str, tuple[Any, Any]],
    index: Mapping,
    summaries: Mapping[str, str],
    method_name: str,
) -> str:
    heads = []
    if index.get("method") != method_name:
        heads.append(f"holds results of method {index.get('method')!r}, not {method_name!r}")
    lines = []
    old_summaries = index.get("fingerprint_summary") or {}
    for field, (old, new) in fields.items():
        if field.startswith("batch "):
            heads.append(
                f"holds {field} with {old} examples, but {field} has {new} (the stream changed)"
            )
            continue
        if field == "padding":
            lines.append(
                f"  padding: the stored random draws were made on batches padded to "
                f"multiples of {old} rows; this mesh needs multiples of {new}"
            )
            continue

        def show(digest: Any, summary: Any) -> str:
            if digest is None:
                return "absent"
            return f"{digest[:16]}" + ("" if summary in (None, digest) else f" {summary}")

        lines.append(
            f"  {field}: {show(old, old_summaries.get(field))} -> {show(new, summaries.get(field))}"
        )
    head = "; it ".join(heads) if heads else "holds results of another run"
    body = "\nthese differ (stored -> this run):\n" + "\n".join(lines) if lines else ""
    return f"out {out!r} {head}{body}\npass resume=False to overwrite, or another out"


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def _is_target(t: Any) -> bool:
    if t is None or isinstance(t, (int, np.integer, list)):
        return not isinstance(t, bool)
    return hasattr(t, "dtype") and np.issubdtype(np.dtype(t.dtype), np.integer)


def _split_batch(batch: Any, with_targets: bool | None, i: int) -> tuple[PyTree, Any, bool]:
    """``(x, target, has_target)`` from one item of ``batches``."""
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"], batch.get("target"), "target" in batch
    if with_targets is False:
        return batch, None, False
    pair = isinstance(batch, tuple) and len(batch) == 2
    if with_targets:
        if not pair:
            raise ValueError(
                f"with_targets=True needs every batch to be an (x, target) pair; batch {i} is "
                f"a {type(batch).__name__}"
            )
        return batch[0], batch[1], True
    if pair and _is_target(batch[1]):
        return batch[0], batch[1], True
    return batch, None, False


def _pad_rows(a: Any, n: int, size: int) -> Any:
    """Repeat the last row of ``a`` (leading dim n) up to ``size`` rows."""
    if size == n:
        return a
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)], axis=0)


def _pad_target(t: Any, n: int, size: int) -> Any:
    if isinstance(t, list):
        t = np.asarray(t)
    if hasattr(t, "shape") and len(t.shape) >= 1 and t.shape[0] == n:
        return _pad_rows(t, n, size)
    return t


def _default_mesh() -> Mesh:
    return Mesh(np.asarray(jax.local_devices()), ("batch",))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _takes_key(method: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def attribute_dataset(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    batches: Iterable[Any],
    *,
    out: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
    show_progress: bool = True,
    resume: bool = True,
    with_targets: bool | None = None,
    **method_kwargs: Any,
) -> PyTree | AttributionStore:
    """Run an attribution method over a stream of batches, data-parallel over devices.

    Every batch is padded (repeating its last example) to a multiple of the mesh size, and
    smaller batches up to the size of the first one so the method compiles once; it is
    placed on ``mesh`` with its batch axis split over all the mesh's devices
    (``NamedSharding(mesh, P(mesh.axis_names))``), the method runs on the sharded batch
    (its compiled core partitions along the batch), and the padding is trimmed off. The
    next batch is dispatched before the previous one is copied to the host, so writing
    overlaps computing.

    With ``out``, each batch's result is saved as ``.npy`` files (one per result leaf)
    plus a JSON index, as soon as it is done; every file is written to a temporary file in
    ``out``, flushed, fsync-ed and renamed, and the index lists a batch only after its
    files are in place, with each file's shape and dtype.

    Resuming (``resume=True``): batches already in the index are skipped (still read from
    ``batches``, not computed); a listed batch whose file is missing, unreadable or not
    of the recorded shape and dtype is computed again. The index holds a fingerprint of
    the run, one sha256 per field: ``method`` (its qualified name; ``functools.partial``
    and jaxattr wrappers such as :func:`noise_tunnel` with their arguments),
    ``options.<name>`` for every keyword in ``method_kwargs`` (scalars by type and value,
    arrays by dtype, shape and bytes, callables by module and qualname), ``target`` (the
    keyword's value; per-batch targets by layout), ``model.structure`` (for a model with
    ``params`` and ``layers``: its type, layer names and parameter names, shapes and
    dtypes; for a function its module and qualname), ``model.weights`` (the bytes of the
    arrays of ``fn.params``, of a pytree ``fn``, or that a function refers to through its
    closure and globals), ``inputs`` (each input leaf's dtype and shape after the batch
    axis) and ``key``. Resuming with any field different, with a stored batch of another
    size, or from an index written before fingerprints existed raises
    :class:`ResumeMismatchError`, listing the fields with their stored and new digests.
    ``resume=False`` starts a new index and overwrites.

    Multi-host: call ``jax.distributed.initialize()`` first in every process and pass the
    same ``batches`` stream to each; process ``p`` of ``P`` handles the batches whose
    position ``i`` has ``i % P == p`` on its local devices (attribution needs no
    communication between examples), writing its own index file into a shared ``out``.
    :class:`AttributionStore` merges them. Without ``out`` each process returns only
    its own batches' results.

    Random methods: a ``key`` in ``method_kwargs`` (for a method that takes ``key`` or
    ``**kwargs``) is folded with each batch's position (``jax.random.fold_in(key, i)``).
    The draws have the padded batch's shape, so the padding is fixed per stream: the
    index records the first computed batch's padded size and the mesh size it is a
    multiple of, and a resumed run pads every batch exactly as the uninterrupted run
    did. A resumed random run is therefore bit-identical to the uninterrupted one; one
    whose mesh size does not divide the recorded multiple raises
    :class:`ResumeMismatchError` (its draws would differ).

    Args:
        method: A jaxattr method ``method(fn, x, **kwargs)``.
        fn: Batch-first pure function, ``fn(x) -> y``, or a structured model.
        batches: An iterable of batches: ``x`` (an array (B, ...) or a tuple/pytree of
            them), ``(x, target)`` pairs, or dicts ``{"x": ..., "target": ...}``. A
            2-tuple whose second item is None, an int, a list or an integer array is read
            as ``(x, target)`` unless ``with_targets=False``.
        out: A directory for the results (created if needed); None keeps them in memory.
        mesh: The device mesh; default a 1-D mesh ``("batch",)`` over
            ``jax.local_devices()``.
        show_progress: Show a progress bar (tqdm) over batches.
        resume: Skip batches already written to ``out`` by the same run; ``False`` starts
            a new index.
        with_targets: Force reading every batch as ``(x, target)`` (True) or as ``x``
            (False); None decides as above.
        **method_kwargs: Passed to ``method`` (``n_steps``, ``baselines``, ``key``, ...);
            arrays here are shared by every batch, not split per example.

    Returns:
        Without ``out``, the results of all batches concatenated along the batch axis, as
        numpy arrays with the method's output structure; with ``out``, an
        :class:`AttributionStore` over the directory.

    Raises:
        ValueError: A batch is malformed or ``target`` is given twice.
        ResumeMismatchError: (a ValueError) ``resume=True`` and ``out`` holds results of
            a different run: another method, option, target, model, input layout or key,
            a batch with another size, or an index without a fingerprint.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr, tempfile
        >>> fn = lambda x: x @ jnp.array([[1.0], [2.0], [3.0]])
        >>> batches = [jnp.ones((4, 3)), jnp.ones((2, 3))]
        >>> jaxattr.attribute_dataset(jaxattr.saliency, fn, batches, show_progress=False).shape
        (6, 3)
        >>> out = tempfile.mkdtemp()
        >>> sg = dict(key=jax.random.key(0), n_iter=4, target=0, show_progress=False)
        >>> store = jaxattr.attribute_dataset(jaxattr.smoothgrad, fn, batches, out=out, **sg)
        >>> sorted(store.fingerprint)  # doctest: +NORMALIZE_WHITESPACE
        ['inputs', 'key', 'method', 'model.structure', 'model.weights', 'options.n_iter',
         'target']
        >>> try:
        ...     jaxattr.attribute_dataset(jaxattr.smoothgrad, fn, batches, out=out,
        ...                               **{**sg, "n_iter": 8})
        ... except jaxattr.ResumeMismatchError as e:
        ...     print(sorted(e.fields))
        ['options.n_iter']
    """
    if not callable(method):
        raise TypeError(f"method must be a jaxattr method, got {type(method).__name__}")
    mesh = _default_mesh() if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    n_dev = int(mesh.devices.size)
    p_index, p_count = jax.process_index(), jax.process_count()
    method_name = getattr(method, "__name__", type(method).__name__)
    key = method_kwargs.pop("key", None) if _takes_key(method) else None

    index: dict | None = None
    index_path = None
    resumed = False
    if out is not None:
        out = os.fspath(out)
        os.makedirs(out, exist_ok=True)
        index_path = os.path.join(out, _index_name(p_index, p_count))
        if resume and os.path.exists(index_path):
            with open(index_path) as f:
                index = json.load(f)
            if index.get("batches") and not index.get("fingerprint"):
                raise ResumeMismatchError(
                    f"out {out!r} holds an index without a fingerprint (format "
                    f"{index.get('format')!r}, written before jaxattr recorded what determines "
                    f"the results), so this run cannot be checked against it and resuming "
                    f"could mix results of different runs; pass resume=False to overwrite, or "
                    f"another out",
                    {"fingerprint": (None, "this run's")},
                )
            resumed = bool(index.get("batches"))
        if not resumed:
            index = {
                "format": _FORMAT,
                "method": method_name,
                "structure": None,
                "batches": {},
                "fingerprint": None,
                "fingerprint_summary": None,
                "padding": None,
            }

    total = len(batches) if hasattr(batches, "__len__") else None
    results: list = []
    structure: Any = None if index is None else index["structure"]
    pending: tuple | None = None
    # {"size": rows of the first computed batch, "multiple": the mesh size it rounds to}
    padding: dict | None = None if index is None else index.get("padding")
    multiple = n_dev if padding is None else math.lcm(int(padding["multiple"]), n_dev)
    checked = index is None

    def finish(item: tuple) -> None:
        nonlocal structure
        i, n, res = item
        host = jax.tree_util.tree_map(lambda a: np.asarray(a[:n]), res)
        if structure is None:
            structure = _describe(host)
        if index is None:
            results.append(host)
            return
        files, leaves = [], []
        for j, leaf in enumerate(_leaves(host, structure)):
            name = f"b{i:07d}_{j}.npy"
            _save_npy(os.path.join(out, name), leaf)
            files.append(name)
            leaves.append({"shape": list(leaf.shape), "dtype": str(leaf.dtype)})
        index["structure"] = structure
        index["batches"][str(i)] = {"n": n, "files": files, "leaves": leaves}
        _write_json(index_path, index)

    def check(i: int, x: PyTree, target: Any, has_target: bool, n: int) -> None:
        """Fingerprint the run on its first batch; compare with the stored one."""
        digests, summaries = _fingerprint(method, fn, method_kwargs, key, x, target, has_target, n)
        if not resumed:
            index["fingerprint"], index["fingerprint_summary"] = digests, summaries
            return
        stored = index["fingerprint"]
        fields: dict[str, tuple[Any, Any]] = {
            f: (stored.get(f), digests.get(f))
            for f in sorted(set(stored) | set(digests))
            if stored.get(f) != digests.get(f)
        }
        done = index["batches"].get(str(i))
        if done and done["n"] != n:
            fields[f"batch {i}"] = (done["n"], n)
        if key is not None and padding is not None and multiple != padding["multiple"]:
            fields["padding"] = (padding["multiple"], multiple)
        if fields:
            raise ResumeMismatchError(
                _mismatch_message(out, fields, index, summaries, method_name), fields
            )

    stream = progress(
        enumerate(batches),
        total=total,
        desc=f"attribute_dataset({method_name})",
        enabled=show_progress,
    )
    for i, batch in stream:
        if i % p_count != p_index:
            continue
        x, target, has_target = _split_batch(batch, with_targets, i)
        leaves = jax.tree_util.tree_leaves(x)
        if not leaves or any(np.ndim(a) == 0 for a in leaves):
            raise ValueError(f"batch {i} must hold arrays leading with the batch size, got {x!r}")
        n = int(np.shape(leaves[0])[0])
        if not checked:
            check(i, x, target, has_target, n)
            checked = True
        done = index is not None and index["batches"].get(str(i))
        if done:
            if done["n"] != n:
                raise ResumeMismatchError(
                    f"out {out!r} holds batch {i} with {done['n']} examples, but batch {i} has "
                    f"{n}: the stream changed; pass resume=False to overwrite, or another out",
                    {f"batch {i}": (done["n"], n)},
                )
            if _shards_intact(out, done):
                continue
            warnings.warn(
                f"out {out!r} lists batch {i}, but a file of it is missing, unreadable or "
                f"not of the recorded shape; computing batch {i} again",
                stacklevel=2,
            )
        if padding is None:
            padding = {"size": _round_up(n, multiple), "multiple": multiple}
            if index is not None:
                index["padding"] = padding
        size = _round_up(max(n, int(padding["size"])), multiple)
        xs = jax.tree_util.tree_map(
            lambda a, size=size, n=n: jax.device_put(_pad_rows(a, n, size), sharding), x
        )
        kwargs = dict(method_kwargs)
        if has_target:
            if "target" in kwargs:
                raise ValueError(
                    f"target is given twice: by batch {i} and as a keyword; give it once"
                )
            kwargs["target"] = _pad_target(target, n, size)
        elif "target" in kwargs:
            kwargs["target"] = _pad_target(kwargs["target"], n, size)
        if key is not None:
            kwargs["key"] = jax.random.fold_in(key, i)
        res = method(fn, xs, **kwargs)
        if pending is not None:
            finish(pending)
        pending = (i, n, res)
    if pending is not None:
        finish(pending)

    if out is not None:
        if index["structure"] is None:  # nothing written in this run or before
            _write_json(index_path, index)
        return AttributionStore(out)
    if not results:
        raise ValueError("batches is empty: there is nothing to attribute")
    parts = [_leaves(r, structure) for r in results]
    leaves = [np.concatenate(ls, axis=0) for ls in zip(*parts, strict=False)]
    return _rebuild(structure, iter(leaves))
