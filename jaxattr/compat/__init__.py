"""Front doors for Captum and Zennit users: their classes, run by jaxattr.

``jaxattr.compat.captum`` has Captum's attribution classes (``IntegratedGradients``,
``LayerGradCam``, ``NoiseTunnel``, ...) and ``jaxattr.compat.zennit`` Zennit's attributors
and composites (``Gradient``, ``EpsilonPlusFlat``, ...), with their signatures: a user
changes one import line and keeps the rest. Each class takes a torch module (or a
function of torch tensors), converts it once with :func:`jaxattr.bridge.from_torch`
(cached by module and input signature, refreshed when the weights change), runs the
jaxattr method and returns torch tensors in the original library's structure.

This package imports torch; ``import jaxattr`` never imports it. See ``docs/compat.md``.

This module holds what both front doors share: the conversion cache, the tensor
conversions and :class:`UnsupportedOptionError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import torch

__all__ = ["UnsupportedOptionError", "clear_conversions", "conversion_count"]


class UnsupportedOptionError(NotImplementedError):
    """An option of the original library that the jaxattr front door does not serve.

    The message names the class, each option that is not supported, and why.
    """


def unsupported(where: str, options: dict[str, str]) -> UnsupportedOptionError:
    """The error for ``options`` (``{name: reason}``) of ``where``."""
    listed = "; ".join(f"{k} ({v})" for k, v in options.items())
    return UnsupportedOptionError(f"{where}: not supported by jaxattr.compat: {listed}")


# --------------------------------------------------------------------------------------
# Tensors in and out
# --------------------------------------------------------------------------------------


def is_tensor(a: Any) -> bool:
    return isinstance(a, torch.Tensor)


def to_numpy(t: Any) -> Any:
    """A torch tensor as a NumPy array (int64 as int32 and float64 as float32 unless
    JAX runs in 64-bit mode); anything else unchanged."""
    if not is_tensor(t):
        return t
    a = t.detach().cpu()
    if a.dtype == torch.bfloat16:
        a = a.float()
    a = a.numpy()
    if not jax.config.jax_enable_x64:
        if a.dtype == np.int64:
            if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
                raise ValueError("an int64 tensor holds values outside int32 (JAX's default)")
            a = a.astype(np.int32)
        elif a.dtype == np.float64:
            a = a.astype(np.float32)
    return a


def to_torch(tree: Any, like: torch.Tensor | None = None) -> Any:
    """JAX/NumPy arrays in ``tree`` as torch tensors (on ``like``'s device); tuples stay
    tuples and lists stay lists, as Captum returns them."""

    def one(a: Any) -> Any:
        if isinstance(a, (jax.Array, np.ndarray, np.generic)):
            t = torch.from_numpy(np.array(a))
            if like is not None and t.device != like.device:
                t = t.to(like.device)
            return t
        return a

    if isinstance(tree, tuple):
        return tuple(to_torch(a, like) for a in tree)
    if isinstance(tree, list):
        return [to_torch(a, like) for a in tree]
    return one(tree)


def torch_tree_to_numpy(tree: Any) -> Any:
    """Tensors (in tuples/lists) to NumPy; numbers and None unchanged."""
    if isinstance(tree, tuple):
        return tuple(torch_tree_to_numpy(a) for a in tree)
    if isinstance(tree, list):
        return [torch_tree_to_numpy(a) for a in tree]
    return to_numpy(tree)


# --------------------------------------------------------------------------------------
# The conversion cache
# --------------------------------------------------------------------------------------


def _modules_used_by(fn: Callable[..., Any]) -> list[torch.nn.Module]:
    """The torch modules a function reaches: its ``self``, closure cells and the globals
    it names (so their weights are parameters of the conversion, refreshed on change)."""
    found: list[torch.nn.Module] = []

    def add(obj: Any) -> None:
        if isinstance(obj, torch.nn.Module) and not any(obj is m for m in found):
            found.append(obj)

    target = fn
    if isinstance(target, torch.nn.Module):
        add(target)
        return found
    add(getattr(target, "__self__", None))
    func = getattr(target, "__func__", target)
    func = getattr(func, "func", func)  # functools.partial
    for cell in getattr(func, "__closure__", None) or ():
        try:
            add(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    code = getattr(func, "__code__", None)
    glb = getattr(func, "__globals__", {})
    for name in getattr(code, "co_names", ()):
        add(glb.get(name))
    return found


class _Forward(torch.nn.Module):
    """Wraps a function of tensors (or a module called with non-tensor arguments) as a
    module of tensors only; the modules it uses are registered as ``m0``, ``m1``, ..."""

    def __init__(self, fn: Callable[..., Any], modules: Sequence[torch.nn.Module], layout: tuple):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(f"m{i}", m)
        object.__setattr__(self, "_fn", fn)  # not registered twice if it is a module
        self._layout = layout  # per positional argument: (False, None) or (True, constant)

    def _call(self, *tensors: torch.Tensor) -> Any:
        it = iter(tensors)
        args = [value if const else next(it) for const, value in self._layout]
        return self._fn(*args)


def _forward_class(n: int) -> type:
    """A ``_Forward`` whose ``forward`` names its ``n`` tensor arguments (torch.export
    needs named positional parameters to give each one a dynamic batch)."""
    names = ", ".join(f"x{i}" for i in range(n))
    ns: dict[str, Any] = {}
    exec(f"def forward(self, {names}):\n    return self._call({names})\n", ns)  # noqa: S102
    return type(f"_Forward{n}", (_Forward,), {"forward": ns["forward"]})


@dataclasses.dataclass
class _Entry:
    conv: Any
    root: torch.nn.Module
    structure: tuple
    values: tuple
    batch: int | None  # the batch size the program is fixed to, None when dynamic
    paths: dict[int, str] | None = None


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STRONG: dict[int, tuple[Any, dict]] = {}  # owners that cannot be weakly referenced
_LOCK = threading.RLock()
_COUNT = [0]


def conversion_count() -> int:
    """How many times the front doors converted a torch model in this process (for
    checking that a second call reuses the conversion)."""
    return _COUNT[0]


def clear_conversions() -> None:
    """Forget every cached conversion."""
    with _LOCK:
        _CACHE.clear()
        _STRONG.clear()


def _state(root: torch.nn.Module) -> tuple[dict[str, torch.Tensor], tuple, tuple]:
    sd = root.state_dict(keep_vars=True)
    structure = (
        tuple((k, tuple(t.shape), str(t.dtype)) for k, t in sd.items()),
        tuple((n, id(m), type(m), m.training) for n, m in root.named_modules()),
    )
    values = tuple((t.data_ptr(), _version(t)) for t in sd.values())
    return sd, structure, values


def _version(t: torch.Tensor) -> Any:
    """The tensor's in-place version counter; inference tensors have none, so they count
    as changed on every call (their values are read again; nothing recompiles)."""
    try:
        return t._version
    except RuntimeError:
        return object()


def _static_key(value: Any) -> Any:
    try:
        hash(value)
        return (type(value), value)
    except TypeError:
        return (type(value), id(value))


class TorchModel:
    """What a Captum/Zennit class was built with (a torch module or a function of torch
    tensors), and its conversions: one per input signature, shared by every front-door
    object built on the same module, refreshed when the weights change."""

    def __init__(self, forward_func: Any, where: str):
        if not callable(forward_func):
            raise TypeError(
                f"{where}: expected a torch module or function, got {type(forward_func).__name__}"
            )
        self.forward_func = forward_func
        self.where = where
        self.is_module = isinstance(forward_func, torch.nn.Module)
        self_obj = getattr(forward_func, "__self__", None)
        if not self.is_module and isinstance(self_obj, torch.nn.Module):
            self.owner, self.extra = self_obj, getattr(forward_func, "__func__", None)
        else:
            self.owner, self.extra = forward_func, None

    # -- cache plumbing
    def _entries(self) -> dict:
        with _LOCK:
            try:
                return _CACHE.setdefault(self.owner, {})
            except TypeError:  # not weakly referenceable: keep it alive with its entries
                held = _STRONG.get(id(self.owner))
                if held is None or held[0] is not self.owner:
                    held = _STRONG[id(self.owner)] = (self.owner, {})
                return held[1]

    def converted(
        self, tensors: Sequence[torch.Tensor], consts: tuple, options: tuple = ()
    ) -> _Entry:
        """The conversion for these positional tensors (inputs, then the tensor
        additional arguments) and non-tensor arguments ``consts`` ((position, value));
        ``options`` ((name, value) pairs) are keyword arguments of
        :func:`jaxattr.bridge.from_torch` (``(("output", "logits"),)``), part of the key."""
        sig = (
            self.extra,
            tuple((tuple(t.shape[1:]), str(t.dtype)) for t in tensors),
            tuple((i, _static_key(v)) for i, v in consts),
        )
        if options:
            sig = (*sig, tuple(options))
        batch = int(tensors[0].shape[0]) if tensors and tensors[0].ndim else None
        entries = self._entries()
        with _LOCK:
            entry = entries.get(sig)
            if entry is not None and entry.batch is not None and entry.batch != batch:
                sig = (sig, batch)  # a program fixed to another batch size
                entry = entries.get(sig)
            if entry is not None:
                sd, structure, values = _state(entry.root)
                if structure != entry.structure:
                    entry = None  # a module was replaced or changed mode: convert again
                elif values != entry.values:
                    entry = self._refresh(entry, sd, values)
            if entry is None:
                entry = self._convert(tensors, consts, options)
            entries[sig] = entry
            return entry

    def _refresh(self, entry: _Entry, sd: dict, values: tuple) -> _Entry | None:
        """New weights (same architecture): new params for the same program."""
        conv = entry.conv
        if not set(conv.params) <= set(sd):
            return None
        new = {k: jax.numpy.asarray(to_numpy(sd[k]), dtype=v.dtype) for k, v in conv.params.items()}
        fresh = type(conv).tree_unflatten(conv._shared, (new,))
        return dataclasses.replace(entry, conv=fresh, values=values)

    def _convert(
        self, tensors: Sequence[torch.Tensor], consts: tuple, options: tuple = ()
    ) -> _Entry:
        from jaxattr import bridge

        n = len(tensors) + len(consts)
        const_at = dict(consts)
        layout = tuple((i in const_at, const_at.get(i)) for i in range(n))
        fn = self.forward_func
        if self.is_module and not consts:
            root = fn
        else:
            modules = _modules_used_by(fn)
            root = _forward_class(len(tensors))(fn, modules, layout)
        example = tuple(t.detach() for t in tensors)
        conv = bridge.from_torch(
            root, example if len(example) != 1 else example[0], **dict(options)
        )
        _COUNT[0] += 1
        _, structure, values = _state(root)
        fixed = [getattr(s, "shape", None) for s in getattr(conv, "_inputs", ())]
        batch = None
        if any(s is not None and len(s) and s[0] is not None for s in fixed):
            batch = int(tensors[0].shape[0])
        return _Entry(conv, root, structure, values, batch)

    # -- layers
    def layer_path(self, entry: _Entry, layer: Any) -> str:
        """The bridge's name for a torch module (a layer argument of Captum's classes)."""
        if isinstance(layer, str):
            return layer
        if not isinstance(layer, torch.nn.Module):
            raise TypeError(
                f"{self.where}: layer must be a torch.nn.Module of the model, got "
                f"{type(layer).__name__}"
            )
        if entry.paths is None:
            entry.paths = {}
            for name, m in entry.root.named_modules():
                entry.paths.setdefault(id(m), name)
        path = entry.paths.get(id(layer))
        if path is None or path == "":
            raise ValueError(
                f"{self.where}: layer {type(layer).__name__} is not a sub-module of the model "
                "that was converted (pass a module reached from the model's attributes, "
                "e.g. model.layer4)"
            )
        if not _reached(entry.conv, path):
            raise KeyError(
                f"{self.where}: layer {path!r} ({type(layer).__name__}) is a sub-module of the "
                "model, but the forward pass never reaches it, so it has no activation to "
                "attribute (Captum 0.9 fails there too: 'Forward hook did not obtain any "
                "outputs for given layer')"
            )
        return path


def _reached(conv: Any, path: str) -> bool:
    """Whether a layer runs at ``path`` (a layer, or a container with layers inside)."""
    layers = getattr(conv, "layers", {})
    if path in layers:
        return True
    finder = getattr(conv, "module_layers", None)
    if finder is None:
        return True  # cannot tell: let the method's own lookup decide
    try:
        return bool(finder(path))
    except (KeyError, ValueError):
        return False


def split_args(additional_forward_args: Any, n_inputs: int) -> tuple[list[Any], tuple]:
    """Captum's ``additional_forward_args`` as (tensors, ((position, constant), ...));
    positions are those in the forward call, after the ``n_inputs`` inputs."""
    if additional_forward_args is None:
        add: tuple = ()
    elif isinstance(additional_forward_args, tuple):
        add = additional_forward_args
    else:
        add = (additional_forward_args,)
    tensors = [a for a in add if is_tensor(a)]
    consts = tuple((n_inputs + i, a) for i, a in enumerate(add) if not is_tensor(a))
    return tensors, consts


def call_with_inputs(fn: Callable[..., Any], inputs: tuple) -> Any:
    """Call a Captum baseline callable: with no arguments or with the inputs."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {"inputs": None}
    return fn() if len(params) == 0 else fn(inputs if len(inputs) > 1 else inputs[0])


def torch_key(key: Any = None) -> jax.Array:
    """A JAX key: the one given, or one drawn from torch's global generator (so
    ``torch.manual_seed`` makes the random methods repeatable)."""
    if key is not None:
        return key
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return jax.random.key(seed)
