"""The ``jaxattr`` command.

- ``jaxattr demo``: explain generated shapes with the embedded model; writes a labelled
  figure, a table and the inputs to ``./jaxattr-demo`` (see ``docs/demo.md``).
- ``jaxattr explain MODEL INPUT --method ig,lrp,gradcam``: explain a torch model (a saved
  ``torch.export`` program ``.pt2``, or ``module:factory`` returning an ``nn.Module``) on an
  image, a ``.npy`` batch or a directory of images, with one or several methods sharing one
  conversion; writes per input a figure (the heat maps over the input, with colour bars)
  and the attributions (``.npz``) to ``./jaxattr-explain``, or to the ``.npy``/``.npz``/
  ``.png`` file ``--out`` names.
- ``jaxattr list-methods`` (or ``--list-methods``): the methods ``explain`` accepts.

Every user error ends as one ``jaxattr: error: ...`` line on stderr with exit status 2.

Caches (``explain``; ``--no-cache`` turns both off, ``--cache-dir`` or ``$JAXATTR_CACHE_DIR``
moves them from ``~/.cache/jaxattr``):

- ``jax/``: JAX's persistent compilation cache, set for this process only with
  ``jax.config.update("jax_compilation_cache_dir", ...)`` (a config, not an XLA flag) and
  restored when ``main`` returns; no compiled program is rebuilt on a second run.
- ``programs/<model>-<code>/``: for a ``.pt2`` file (keyed by its bytes, then by the
  jaxattr source and the JAX version; an entry made by older code is deleted when a new
  one is stored), its weights (``params/``), its layer names and each program run on
  it (the forward pass, each method at each input shape) serialized with ``jax.export``.
  A second run of the same command neither imports torch nor converts the model.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: File suffixes read as images (with Pillow).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: ``name -> (aliases, what it needs)`` of the methods of ``jaxattr explain``.
METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    "saliency": ((), ""),
    "gradient": (("grad",), ""),
    "input_x_gradient": (("ixg",), ""),
    "integrated_gradients": (("ig",), "--steps"),
    "smoothgrad": (("sg",), "--samples"),
    "occlusion": ((), "--window --stride"),
    "lrp": ((), "a structured model (epsilon_plus_flat composite)"),
    "guided_backprop": (("gbp",), "a structured model"),
    "deconvolution": ((), "a structured model"),
    "deep_lift": (("deeplift",), "a structured model"),
    "grad_cam": (("gradcam",), "--layer (default: the model's last convolution)"),
    "guided_grad_cam": (("guided_gradcam",), "--layer (default: the model's last convolution)"),
}
ALIASES = {a: name for name, (aliases, _) in METHODS.items() for a in (name, *aliases)}
LAYER_METHODS = ("grad_cam", "guided_grad_cam")


class CliError(Exception):
    """A user error: printed as ``jaxattr: error: ...`` with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`CliError` (one ``jaxattr: error:`` line, exit 2)."""

    def error(self, message: str) -> Any:  # noqa: D102 - argparse's hook
        raise CliError(f"{message} (see `{self.prog} --help`)")


# --------------------------------------------------------------------------- methods
def parse_methods(text: str) -> list[str]:
    """``"ig,lrp,gradcam"`` -> ``["integrated_gradients", "lrp", "grad_cam"]`` (deduplicated).

    Example:
        >>> parse_methods("ig, lrp,gradcam,ig")
        ['integrated_gradients', 'lrp', 'grad_cam']
    """
    names: list[str] = []
    for part in text.split(","):
        word = part.strip().lower().replace("-", "_")
        if not word:
            continue
        if word not in ALIASES:
            short = ", ".join(f"{a}={n}" for a, n in ALIASES.items() if a != n)
            raise CliError(
                f"--method must be one of {sorted(METHODS)} or an alias ({short}), "
                f"comma-separated; got {part.strip()!r}"
            )
        if ALIASES[word] not in names:
            names.append(ALIASES[word])
    if not names:
        raise CliError("--method is empty; e.g. --method ig,lrp,gradcam")
    return names


def _method_options(name: str, args: argparse.Namespace, layer: str | None) -> dict[str, Any]:
    """What changes the method's program (part of its cache key)."""
    opts: dict[str, Any] = {"layout": args.layout}
    if name == "integrated_gradients":
        opts["steps"] = args.steps
    elif name == "smoothgrad":
        opts["samples"] = args.samples
    elif name == "occlusion":
        opts.update(window=args.window, stride=args.stride)
    elif name in LAYER_METHODS:
        opts["layer"] = layer
    return opts


def _method_builder(name: str, opts: dict[str, Any]) -> Callable[[Any], Callable[..., Any]]:
    """``build(model) -> call(model, x, target)`` for one method and its options."""
    import jax

    import jaxattr

    channel_axis = 1 if opts["layout"] == "nchw" else -1
    calls: dict[str, Callable[..., Any]] = {
        "saliency": lambda m, x, t: jaxattr.saliency(m, x, target=t),
        "gradient": lambda m, x, t: jaxattr.gradient(m, x, target=t),
        "input_x_gradient": lambda m, x, t: jaxattr.input_x_gradient(m, x, target=t),
        "integrated_gradients": lambda m, x, t: jaxattr.integrated_gradients(
            m, x, target=t, n_steps=opts.get("steps")
        ),
        "smoothgrad": lambda m, x, t: jaxattr.smoothgrad(
            m, x, key=jax.random.key(0), target=t, n_iter=opts.get("samples")
        ),
        "occlusion": lambda m, x, t: jaxattr.occlusion(
            m, x, target=t, window=opts.get("window"), stride=opts.get("stride")
        ),
        "lrp": lambda m, x, t: jaxattr.lrp(m, x, composite=jaxattr.epsilon_plus_flat(), target=t),
        "guided_backprop": lambda m, x, t: jaxattr.guided_backprop(m, x, target=t),
        "deconvolution": lambda m, x, t: jaxattr.deconvolution(m, x, target=t),
        "deep_lift": lambda m, x, t: jaxattr.deep_lift(m, x, target=t),
        "grad_cam": lambda m, x, t: jaxattr.grad_cam(
            m,
            x,
            opts["layer"],
            target=t,
            channel_axis=channel_axis,
            relu_attributions=True,
            interpolate_to="input",
            interpolate_mode="bilinear",
        ),
        "guided_grad_cam": lambda m, x, t: jaxattr.guided_grad_cam(
            m, x, opts["layer"], target=t, channel_axis=channel_axis
        ),
    }
    call = calls[name]
    return lambda model: call


def _list_methods() -> str:
    lines = ["methods for `jaxattr explain --method a,b,...` (aliases; what they need):"]
    for name, (aliases, needs) in METHODS.items():
        shown = f"({', '.join(aliases)})" if aliases else ""
        lines.append(f"  {name:22s} {shown:18s} {needs}")
    lines.append("")
    lines.append(
        "every method of the Python API: python -c 'import jaxattr; print(jaxattr.__all__)'"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- inputs
def _collect_inputs(path: Path) -> list[Path]:
    """The input files: ``path`` itself, or the images and ``.npy`` files of a directory."""
    if not path.exists():
        raise CliError(f"INPUT {str(path)!r} does not exist")
    if not path.is_dir():
        return [path]
    files = sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy")
    )
    if not files:
        raise CliError(
            f"INPUT {str(path)!r} is a directory without images "
            f"({', '.join(IMAGE_SUFFIXES)}) or .npy files"
        )
    return files


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _load_input(path: Path, layout: str) -> np.ndarray:
    """A batch (N, ...) from ``.npy`` or an image file (RGB, scaled to [0, 1])."""
    if not path.exists():
        raise CliError(f"INPUT {str(path)!r} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise CliError(f"INPUT {str(path)!r} is not a readable .npy file: {err}") from err
        if not np.issubdtype(x.dtype, np.number):
            raise CliError(f"INPUT {str(path)!r} must hold numbers, got dtype {x.dtype}")
        if x.ndim == 0:
            raise CliError(f"INPUT {str(path)!r} must be a batch (N, ...), got a scalar")
        return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
    try:
        from PIL import Image
    except ImportError as err:
        raise CliError("reading images needs Pillow: pip install Pillow (or pass .npy)") from err
    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"), np.float32) / 255.0
    except Exception as err:  # noqa: BLE001
        raise CliError(f"INPUT {str(path)!r} is not a readable image: {err}") from err
    img = img[None]  # (1, H, W, 3)
    return img.transpose(0, 3, 1, 2).copy() if layout == "nchw" else img


def _parse_target(text: str | None) -> Any:
    if text is None or text == "max":
        return "max"
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError as err:
        raise CliError(
            f"--target must be 'max', an int or comma-separated ints, got {text!r}"
        ) from err
    return parts[0] if len(parts) == 1 else tuple(parts)


def _target_array(target: Any, out: np.ndarray) -> np.ndarray:
    """One index per example (N,) for (N, C) outputs, (N, k) for more output dimensions."""
    n, rest = out.shape[0], out.shape[1:]
    if not rest:
        raise CliError(
            f"the model's output has shape {out.shape} (one number per example): nothing to "
            "choose; explain a model whose output has a class axis"
        )
    if target == "max":
        flat = out.reshape(n, -1).argmax(1)
        idx = np.stack(np.unravel_index(flat, rest), 1).astype(np.int32)
        return idx[:, 0] if len(rest) == 1 else idx
    index = (target,) if isinstance(target, int) else tuple(target)
    if len(index) != len(rest):
        raise CliError(
            f"--target {','.join(map(str, index))} gives {len(index)} index(es), but the "
            f"model's output of shape {out.shape} needs {len(rest)} (one per non-batch axis)"
        )
    for i, size in zip(index, rest, strict=True):
        if not 0 <= i < size:
            raise CliError(
                f"--target {','.join(map(str, index))} is out of range for the model's output "
                f"of shape {out.shape} (indices 0..{size - 1})"
            )
    idx = np.tile(np.asarray(index, np.int32), (n, 1))
    return idx[:, 0] if len(rest) == 1 else idx


# --------------------------------------------------------------------------- the model
def _load_model(spec: str, x: np.ndarray, allow_pickle: bool = False) -> Any:
    """A bridged model from a ``.pt2`` file or a ``module:factory`` spec."""
    try:
        from jaxattr import bridge
    except ImportError as err:
        raise CliError(
            f"explaining torch models needs the bridge: pip install jaxattr[torch] ({err})"
        ) from err
    if spec.endswith(".pt2"):
        path = Path(spec)
        if not path.exists():
            raise CliError(f"MODEL {spec!r} does not exist")
        try:
            return bridge.load(path, allow_pickle=allow_pickle)
        except bridge.UnsafeArchiveError as err:
            raise CliError(f"MODEL {spec!r}: {err}; on the command line: --allow-pickle") from err
        except Exception as err:  # noqa: BLE001
            raise CliError(f"MODEL {spec!r} is not a loadable torch.export program: {err}") from err
    if ":" not in spec:
        raise CliError(f"MODEL must be a .pt2 file or module:factory, got {spec!r}")
    mod_name, factory_name = spec.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise CliError(
            f"MODEL {spec!r}: cannot import {factory_name!r} from {mod_name!r}: {err}"
        ) from err
    import torch

    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise CliError(f"MODEL {spec!r} must return a torch.nn.Module, got {type(module).__name__}")
    example = torch.from_numpy(np.ascontiguousarray(np.repeat(x[:1], 2, axis=0)))
    try:
        return bridge.from_torch(module.eval(), example)
    except Exception as err:  # noqa: BLE001
        raise CliError(
            f"MODEL {spec!r} cannot be converted with an input of shape {tuple(x.shape)}: "
            f"{_first_line(err)}{_layout_hint(x, x.ndim == 4 and 3 in (x.shape[1], x.shape[-1]))}"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:600]


def _layout_hint(x: np.ndarray, image: bool = True) -> str:
    if x.ndim != 4:
        return ""
    if not image:
        return " (a .npy input is used as is: transpose it to the model's layout)"
    return (
        f" (the image is read as shape {tuple(x.shape)}: --layout nchw|nhwc puts the "
        "channels where the model wants them, and the image must have the model's size)"
    )


def cache_root(args: argparse.Namespace) -> Path | None:
    """Where the caches live: ``--cache-dir``, ``$JAXATTR_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/jaxattr`` (``~/.cache/jaxattr``); ``None`` with ``--no-cache``."""
    if getattr(args, "no_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return Path(args.cache_dir).expanduser()
    if os.environ.get("JAXATTR_CACHE_DIR"):
        return Path(os.environ["JAXATTR_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "jaxattr"


@contextlib.contextmanager
def compilation_cache(root: Path | None) -> Iterator[None]:
    """JAX's persistent compilation cache in ``root/jax`` while the block runs.

    Sets ``jax_compilation_cache_dir`` (and caches every program, however fast it compiled)
    with ``jax.config.update`` for this process, and restores the previous settings after.
    """
    if root is None:
        yield
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    folder = root / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(
            f"cannot make the cache directory {str(folder)!r}: {err}; pass --cache-dir DIR "
            "or --no-cache"
        ) from err
    settings = {
        "jax_compilation_cache_dir": str(folder),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    old = {k: getattr(jax.config, k) for k in settings}
    for k, v in settings.items():
        jax.config.update(k, v)
    cc.reset_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()


def _code_fingerprint() -> str:
    """The JAX version and every source file of jaxattr and its bridge (size, mtime)."""
    import importlib.util

    import jax
    import jaxlib

    import jaxattr

    h = hashlib.sha256(f"{jax.__version__} {jaxlib.__version__}".encode())
    roots = [Path(jaxattr.__file__).parent]
    spec = importlib.util.find_spec("jaxattr.bridge")
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent)
    for root in roots:
        for p in sorted(root.rglob("*.py")):
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


class _Store:
    """One model's entry in the program cache: weights, layer names, exported programs.

    ``params/<i>.npy`` holds the i-th weight (``np.save``: fast, read back memory-mapped),
    ``model.json`` the layer names and the number of weights (written last: its presence
    means the entry is complete), ``<key>.jaxexport`` one serialized program each.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.folder / "model.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and "layers" in meta else None

    def params(self, count: int) -> list[np.ndarray] | None:
        if count < 0:
            return None
        try:
            return [
                np.load(self.folder / "params" / f"{i}.npy", mmap_mode="r", allow_pickle=False)
                for i in range(count)
            ]
        except (OSError, ValueError):
            return None

    def save_model(self, leaves: list[Any], meta: dict[str, Any]) -> None:
        import shutil

        model = self.folder.name.split("-")[0]
        for old in self.folder.parent.glob(f"{model}-*"):  # made by older code: stale
            if old != self.folder:
                shutil.rmtree(old, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".params.{os.getpid()}.tmp"
        tmp.mkdir(exist_ok=True)
        for i, leaf in enumerate(leaves):
            np.save(tmp / f"{i}.npy", np.asarray(leaf), allow_pickle=False)
        try:
            os.replace(tmp, self.folder / "params")
        except OSError:  # another process stored them first
            shutil.rmtree(tmp, ignore_errors=True)
        meta = {**meta, "n_params": len(leaves)}
        _write_atomic(self.folder / "model.json", lambda f: f.write(json.dumps(meta).encode()))

    def program(self, key: str) -> Any:
        from jax import export

        try:
            return export.deserialize(bytearray((self.folder / f"{key}.jaxexport").read_bytes()))
        except Exception:  # noqa: BLE001 - missing or unreadable: rebuilt
            return None

    def save_program(self, key: str, exported: Any) -> None:
        blob = exported.serialize()
        _write_atomic(self.folder / f"{key}.jaxexport", lambda f: f.write(blob))


class Model:
    """The model of one ``explain`` call: converted at most once, and only when needed.

    Each program (the forward pass, a method with its options at an input shape) is traced
    and compiled once and reused for every input of that shape. With a cache, a ``.pt2``
    model's programs and weights are stored (``jax.export``), so that a later call loads
    them instead of importing torch and converting the model.
    """

    def __init__(self, spec: str, allow_pickle: bool, root: Path | None):
        self.spec = spec
        self.allow_pickle = allow_pickle
        self.converted: Any = None
        self.convert_s: float | None = None  # seconds spent converting; None: not converted
        self.from_cache = 0  # programs loaded from the cache
        self._leaves: list[Any] | None = None
        self._fns: dict[str, Callable[..., Any]] = {}
        self.store: _Store | None = None
        self.meta: dict[str, Any] | None = None
        if root is not None and spec.endswith(".pt2") and Path(spec).is_file():
            model = hashlib.sha256(f"{_file_digest(Path(spec))} {allow_pickle}".encode())
            code = _code_fingerprint()
            # <model>-<code>: a new jaxattr or JAX replaces the model's older entries
            self.store = _Store(root / "programs" / f"{model.hexdigest()[:24]}-{code[:12]}")
            self.meta = self.store.meta()

    def convert(self, x: np.ndarray) -> Any:
        if self.converted is None:
            import jax

            t0 = time.perf_counter()
            self.converted = _load_model(self.spec, x, self.allow_pickle)
            self.convert_s = time.perf_counter() - t0
            self._leaves = jax.tree_util.tree_leaves(self.converted)
            self.meta = {"layers": {n: lay.kind for n, lay in self.converted.layers.items()}}
            if self.store is not None:
                try:
                    self.store.save_model(self._leaves, self.meta)
                except OSError as err:
                    print(f"jaxattr: warning: not caching the model: {err}", file=sys.stderr)
                    self.store = None
        return self.converted

    def layers(self, x: np.ndarray) -> dict[str, str]:
        """``layer name -> kind`` (from the cache when the model is not converted)."""
        if self.meta is None:
            self.convert(x)
        return dict(self.meta["layers"])  # type: ignore[index]

    def leaves(self, x: np.ndarray) -> list[Any]:
        if self._leaves is None:
            cached = None
            if self.store is not None and self.meta is not None:
                cached = self.store.params(int(self.meta.get("n_params", -1)))
            if cached is None:
                self.convert(x)
            else:
                self._leaves = cached
        return self._leaves  # type: ignore[return-value]

    def run(
        self,
        name: str,
        opts: dict[str, Any],
        build: Callable[[Any], Callable[..., Any]],
        *args: np.ndarray,
    ) -> Any:
        """Run program ``name`` (with ``opts``) on ``args``; ``build(model)`` makes its
        function ``f(model, *args)`` when it is neither compiled nor cached."""
        sig = json.dumps(
            [name, opts, [(a.shape, str(a.dtype)) for a in args]], sort_keys=True, default=str
        )
        key = hashlib.sha256(sig.encode()).hexdigest()[:32]
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self._program(key, build, args)
        return fn(self.leaves(args[0]), *args)

    def _program(
        self, key: str, build: Callable[[Any], Callable[..., Any]], args: tuple
    ) -> Callable[..., Any]:
        import jax

        if self.store is not None and self.meta is not None:
            exported = self.store.program(key)
            if exported is not None and self.leaves(args[0]) is not None:
                self.from_cache += 1
                return jax.jit(exported.call)
        model = self.convert(args[0])
        treedef = jax.tree_util.tree_structure(model)
        f = build(model)

        def program(leaves: list[Any], *a: Any) -> Any:
            return f(jax.tree_util.tree_unflatten(treedef, leaves), *a)

        if self.store is not None:
            try:
                exported = jax.export.export(jax.jit(program))(self.leaves(args[0]), *args)
            except (ValueError, TypeError, KeyError, IndexError):
                raise  # the user's mistake (a shape, a layer): reported by the caller
            except Exception:  # noqa: BLE001 - not exportable: compiled, not stored
                exported = None
            if exported is not None:
                try:
                    self.store.save_program(key, exported)
                except OSError as err:
                    print(f"jaxattr: warning: not caching a program: {err}", file=sys.stderr)
                return jax.jit(exported.call)
        return jax.jit(program)


# --------------------------------------------------------------------------- outputs
def make_output_dir(path: Path) -> Path:
    """Make ``path``; a directory made here gets a ``.gitignore`` of ``*``, so that git
    ignores the results wherever they are written (delete that file to commit them)."""
    path = Path(path)
    if not path.exists():
        try:
            path.mkdir(parents=True)
            (path / ".gitignore").write_text(
                "# written by jaxattr: git ignores this folder; delete this file to commit it\n*\n"
            )
        except OSError as err:
            raise CliError(f"cannot make the output directory {str(path)!r}: {err}") from err
    elif not path.is_dir():
        raise CliError(f"--out {str(path)!r} exists and is not a directory")
    return path


def _output_mode(out: Path, inputs: list[Path], from_dir: bool, n_methods: int) -> str:
    suffix = out.suffix.lower()
    if suffix in (".npy", ".npz", ".png"):
        if from_dir or len(inputs) > 1:
            raise CliError(
                f"--out {str(out)!r} is one file, but INPUT is a directory of {len(inputs)} "
                "inputs: pass a directory as --out (one figure and one .npz per input)"
            )
        if suffix == ".npy" and n_methods > 1:
            raise CliError(
                f"--out {str(out)!r}: a .npy file holds one attribution, got {n_methods} "
                "methods; use a .npz file or a directory"
            )
        return suffix[1:]
    if suffix and not out.is_dir():
        raise CliError(f"--out must be a directory, or end in .npy, .npz or .png, got {str(out)!r}")
    return "dir"


def _display_image(x: np.ndarray, layout: str, is_image: bool) -> np.ndarray | None:
    """Example ``x`` (no batch axis) as an (H, W, 3) image in [0, 1], or None."""
    if x.ndim != 3:
        return None
    img = x.transpose(1, 2, 0) if layout == "nchw" else x
    if img.shape[-1] not in (1, 3):
        return None
    img = img.astype(np.float32)
    if not is_image:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def _heat_tiles(maps: dict[str, np.ndarray]) -> np.ndarray:
    """Signed heat maps, rows = examples, columns = methods (no text)."""
    from jaxattr import viz

    names = list(maps)
    n = next(iter(maps.values())).shape[0]
    tiles = [
        viz.imgify(maps[name][i], cmap="bwr", symmetric=True) for i in range(n) for name in names
    ]
    if len(tiles) == 1:
        return tiles[0]
    return viz.grid(np.stack(tiles), shape=(n, len(names)))


def _write_outputs(
    src: Path,
    x: np.ndarray,
    attrs: dict[str, np.ndarray],
    titles: dict[str, str],
    caption: str,
    args: argparse.Namespace,
    mode: str,
    out: Path,
    stems: dict[Path, str],
) -> list[Path]:
    from jaxattr.demo import figure

    written: list[Path] = []
    if mode == "npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, next(iter(attrs.values())))
        return [out]
    if mode == "npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **attrs)
        return [out]
    if mode == "dir":
        arrays = out / f"{stems[src]}.npz"
        np.savez(arrays, **attrs)
        written.append(arrays)
        png = out / f"{stems[src]}.png"
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out
    channel_axis = 1 if args.layout == "nchw" else -1
    try:
        maps = {titles[k]: figure.signed_map(a, channel_axis) for k, a in attrs.items()}
    except ValueError as err:
        if args.overlay or mode == "png":
            raise CliError(f"{src.name}: no picture of these attributions: {err}") from err
        return written  # a non-image model: the .npz only
    overlay = args.overlay if args.overlay is not None else _is_image(src)
    images = [_display_image(xi, args.layout, _is_image(src)) for xi in x]
    fits = all(
        img is not None and img.shape[:2] == m.shape[1:] for img in images for m in maps.values()
    )
    if overlay and not fits:
        if args.overlay:
            raise CliError(
                f"--overlay needs image-shaped inputs and attributions (N, C, H, W) with C 1 "
                f"or 3; {src.name} has shape {tuple(x.shape)}: pass --no-overlay"
            )
        overlay = False
    if not overlay:
        from jaxattr import viz

        viz.save_png(png, _heat_tiles(maps))
        return [*written, png]
    for i, img in enumerate(images):
        path = png if len(images) == 1 else png.with_name(f"{png.stem}_{i}{png.suffix}")
        title = caption if len(images) == 1 else f"{caption} [example {i}]"
        figure.overlay_figure(path, img, {k: m[i] for k, m in maps.items()}, title=title)
        written.append(path)
    return written


def _stems(inputs: list[Path]) -> dict[Path, str]:
    counts: dict[str, int] = {}
    for p in inputs:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return {p: p.stem if counts[p.stem] == 1 else p.name.replace(".", "_") for p in inputs}


# --------------------------------------------------------------------------- explain
def explain(args: argparse.Namespace) -> list[Path]:
    """Run ``jaxattr explain``; returns the files written."""
    if getattr(args, "tokenizer", None) is not None:
        return explain_text(args)
    t_start = time.perf_counter()
    methods = parse_methods(args.method or "saliency")
    src = Path(args.input)
    inputs = _collect_inputs(src)
    out = Path(args.out)
    mode = _output_mode(out, inputs, src.is_dir(), len(methods))
    if args.layer is not None and not any(m in LAYER_METHODS for m in methods):
        print(f"jaxattr: note: --layer is used by {', '.join(LAYER_METHODS)} only", file=sys.stderr)
    target = _parse_target(args.target)
    labels = _read_labels(args.labels)
    batches = [(p, _load_input(p, args.layout)) for p in inputs]
    stems = _stems(inputs)
    root = cache_root(args)
    written: list[Path] = []
    first_result: float | None = None
    with compilation_cache(root):
        model = Model(args.model, args.allow_pickle, root)
        layer = args.layer
        if any(m in LAYER_METHODS for m in methods):
            layers = model.layers(batches[0][1])
            if layer is None:
                convs = [n for n, kind in layers.items() if kind == "conv"]
                if not convs:
                    raise CliError(
                        f"{', '.join(m for m in methods if m in LAYER_METHODS)} needs --layer: "
                        f"the model has no convolution; its layers: {_shown(layers)}"
                    )
                layer = convs[-1]
            elif layer not in layers:
                raise CliError(
                    f"--layer {layer!r} is not a layer of the model; its layers: {_shown(layers)}"
                )
        for path, x in batches:
            try:
                logits = model.run("forward", {}, lambda m: lambda mm, xx: mm(xx), x)
            except (ValueError, TypeError) as err:
                raise CliError(
                    f"{path.name}: the model does not accept this input: {_first_line(err)}"
                    f"{_layout_hint(x, _is_image(path))}"
                ) from err
            if not hasattr(logits, "shape"):
                raise CliError(
                    f"the model returns a {type(logits).__name__}, not one array: explain a "
                    "model with one output (in Python: bridge.load(path, output=...))"
                )
            logits = np.asarray(logits)
            t = _target_array(target, logits)
            attrs: dict[str, np.ndarray] = {}
            titles: dict[str, str] = {}
            for name in methods:
                opts = _method_options(name, args, layer)
                try:
                    attr = model.run(name, opts, _method_builder(name, opts), x, t)
                except (ValueError, TypeError, KeyError, IndexError) as err:
                    raise CliError(f"{name}: {_first_line(err)}") from err
                except Exception as err:  # noqa: BLE001 - an XLA or runtime failure
                    raise CliError(
                        f"{name} failed: {type(err).__name__}: {_first_line(err)}"
                    ) from err
                attrs[name] = np.asarray(attr)
                titles[name] = f"{name} (layer {layer})" if name in LAYER_METHODS else name
                if first_result is None:
                    first_result = time.perf_counter() - t_start
            explained = _describe_target(t, logits, labels)
            caption = f"{path.name}: attributions for {explained}"
            if mode == "dir":
                make_output_dir(out)  # only once there is something to write
            files = _write_outputs(path, x, attrs, titles, caption, args, mode, out, stems)
            written.extend(files)
            print(
                f"{path.name}: {explained}; {', '.join(titles.values())} -> "
                f"{', '.join(str(f) for f in files)}"
            )
    total = time.perf_counter() - t_start
    how = (
        f"model converted in {model.convert_s:.1f} s"
        if model.convert_s is not None
        else "model and programs from the cache (not converted)"
    )
    print(
        f"{len(batches)} input(s) x {len(methods)} method(s) in {total:.1f} s (first result "
        f"after {first_result or 0.0:.1f} s; {how})"
    )
    return written


#: ``name -> aliases`` of the methods of ``jaxattr explain --tokenizer`` (jaxattr.llm).
TEXT_METHODS: dict[str, tuple[str, ...]] = {
    "feature_ablation": ("fa", "ablation"),
    "shapley_value_sampling": ("svs", "shapley_sampling"),
    "shapley_values": ("shapley",),
    "lime": (),
    "kernel_shap": ("kshap",),
    "layer_integrated_gradients": ("lig", "ig"),
    "layer_gradient_x_activation": ("gxa",),
}


def parse_text_methods(text: str) -> list[str]:
    """``"fa,lig"`` -> ``["feature_ablation", "layer_integrated_gradients"]``.

    Example:
        >>> parse_text_methods("fa, lig")
        ['feature_ablation', 'layer_integrated_gradients']
    """
    aliases = {a: n for n, al in TEXT_METHODS.items() for a in (n, *al)}
    names: list[str] = []
    for part in text.split(","):
        word = part.strip().lower().replace("-", "_")
        if not word:
            continue
        if word not in aliases:
            raise CliError(
                f"--method with --tokenizer must be one of {sorted(TEXT_METHODS)} or an alias "
                f"({', '.join(f'{a}={n}' for a, n in aliases.items() if a != n)}); got "
                f"{part.strip()!r}"
            )
        if aliases[word] not in names:
            names.append(aliases[word])
    if not names:
        raise CliError("--method is empty; e.g. --method fa,lig")
    return names


def _load_tokenizer(spec: str) -> Any:
    path = Path(spec)
    try:
        if path.is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path))
        if path.is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(path))
        if ":" in spec:
            mod_name, factory_name = spec.rsplit(":", 1)
            return getattr(importlib.import_module(mod_name), factory_name)()
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--tokenizer {spec!r} cannot be loaded: {_first_line(err)}") from err
    raise CliError(
        f"--tokenizer must be a tokenizer.json file, a tokenizer directory or module:factory, "
        f"got {spec!r}"
    )


def _load_lm(spec: str, length: int, allow_pickle: bool) -> Any:
    """A causal LM returning logits, converted for sequences of ``length`` tokens."""
    from jaxattr import bridge

    if spec.endswith(".pt2"):
        if not Path(spec).exists():
            raise CliError(f"MODEL {spec!r} does not exist")
        try:
            return bridge.load(spec, allow_pickle=allow_pickle, output="logits")
        except KeyError:  # not a dict output: the logits themselves
            return bridge.load(spec, allow_pickle=allow_pickle)
        except Exception as err:  # noqa: BLE001
            raise CliError(f"MODEL {spec!r} is not a loadable torch.export program: {err}") from err
    if ":" not in spec:
        raise CliError(f"MODEL must be a .pt2 file or module:factory, got {spec!r}")
    mod_name, factory_name = spec.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise CliError(
            f"MODEL {spec!r}: cannot import {factory_name!r} from {mod_name!r}: {err}"
        ) from err
    import torch

    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise CliError(f"MODEL {spec!r} must return a torch.nn.Module, got {type(module).__name__}")
    ids = torch.zeros((2, length), dtype=torch.long)
    try:  # a Hugging Face model returns a ModelOutput: keep its logits
        return bridge.from_torch(
            module.eval(), ids, output="logits" if hasattr(module, "config") else None
        )
    except Exception as err:  # noqa: BLE001
        raise CliError(f"MODEL {spec!r} cannot be converted: {_first_line(err)}") from err


def explain_text(args: argparse.Namespace) -> list[Path]:
    """``jaxattr explain MODEL PROMPT --tokenizer TOK``: which prompt tokens made the model
    say its continuation (:mod:`jaxattr.llm`); writes per method a token heat map (.png),
    an HTML view and, for all methods, the attributions (.npz)."""
    import jax

    from jaxattr import llm

    t_start = time.perf_counter()
    methods = parse_text_methods(args.method or "feature_ablation")
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    src = Path(args.input)
    prompt = (
        src.read_text(encoding="utf-8").strip()
        if src.suffix == ".txt" and src.is_file()
        else args.input
    )
    stem = src.stem if src.suffix == ".txt" and src.is_file() else "prompt"
    out = Path(args.out)
    if out.suffix:
        raise CliError(f"--out with --tokenizer must be a directory, got {str(out)!r}")
    tok = _load_tokenizer(args.tokenizer)
    try:
        special = set(getattr(tok, "all_special_ids", []) or [])
        inp = llm.TextTokenInput(prompt, tok)
        skip = [i for i in set(inp.ids.tolist()) if i in special]
        if skip and len(skip) < len(set(inp.ids.tolist())):
            inp = llm.TextTokenInput(prompt, tok, skip_tokens=skip)
    except (TypeError, ValueError) as err:
        raise CliError(f"prompt: {_first_line(err)}") from err
    target = None if args.target in (None, "max") else args.target
    n_target = (
        args.max_new_tokens if target is None else len(llm._Tok(tok).encode(target, special=False))
    )
    length = max(16, -(-(len(inp.ids) + n_target) // 16) * 16)
    written: list[Path] = []
    with compilation_cache(cache_root(args)):
        model = _load_lm(args.model, length, args.allow_pickle)
        results: dict[str, Any] = {}
        for name in methods:
            try:
                if name in llm.GRADIENT_METHODS:
                    res = llm.llm_gradient_attribution(
                        model,
                        tok,
                        inp,
                        target=target,
                        method=name,
                        n_steps=args.steps,
                        layer=args.layer or "auto",
                        max_new_tokens=args.max_new_tokens,
                    )
                else:
                    sampling = name in ("shapley_value_sampling", "lime", "kernel_shap")
                    res = llm.llm_attribution(
                        model,
                        tok,
                        inp,
                        target=target,
                        method=name,
                        max_new_tokens=args.max_new_tokens,
                        **(
                            {"key": jax.random.key(0), "n_samples": args.samples}
                            if sampling
                            else {}
                        ),
                    )
            except (ValueError, TypeError, KeyError) as err:
                raise CliError(f"{name}: {_first_line(err)}") from err
            target = res.target_ids  # generated once, shared by the other methods
            results[name] = res
            make_output_dir(out)
            html_path = out / f"{stem}_{name}.html"
            html_path.write_text(res.to_html(), encoding="utf-8")
            png_path = out / f"{stem}_{name}.png"
            try:
                fig, _ = (
                    res.plot_token_attr() if res.token_attr is not None else res.plot_seq_attr()
                )
                fig.savefig(png_path, bbox_inches="tight", dpi=100)
                written.append(png_path)
            except ImportError:
                print(
                    "jaxattr: note: no matplotlib: no .png (pip install jaxattr[viz])",
                    file=sys.stderr,
                )
            written.append(html_path)
            top = sorted(res.seq_attr_dict.items(), key=lambda kv: -abs(kv[1]))[:3]
            shown = ", ".join(f"{k!r} {v:+.3g}" for k, v in top)
            print(f"{name}: {' '.join(res.output_tokens)!r} <- {shown}")
        npz = out / f"{stem}.npz"
        arrays: dict[str, np.ndarray] = {
            "input_tokens": np.asarray(inp.values),
            "target_ids": np.asarray(target),
        }
        for name, res in results.items():
            arrays[f"{name}_seq_attr"] = res.seq_attr
            if res.token_attr is not None:
                arrays[f"{name}_token_attr"] = res.token_attr
        np.savez(npz, **arrays)
        written.append(npz)
    print(f"{len(methods)} method(s) in {time.perf_counter() - t_start:.1f} s -> {out}")
    return written


def _shown(layers: dict[str, str], limit: int = 30) -> str:
    names = [f"{n} ({k})" for n, k in layers.items()]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_labels(path: str | None) -> list[str] | None:
    """Class names, one a line (``--labels``)."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"--labels {path!r} is not a readable text file: {err}") from err
    return [line.strip() for line in lines]


def _describe_target(t: np.ndarray, logits: np.ndarray, labels: list[str] | None = None) -> str:
    rows = t.reshape(t.shape[0], -1)
    parts = []
    for i, row in enumerate(rows):
        index = tuple(int(v) for v in row)
        score = float(logits[(i, *index)])
        shown = str(index[0]) if len(index) == 1 else str(index)
        if labels is not None and len(index) == 1 and index[0] < len(labels):
            shown += f" {labels[index[0]]!r}"
        parts.append(f"{shown} (output {score:.3g})")
    return ("class " if rows.shape[1] == 1 else "output ") + ", ".join(parts)


# --------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxattr", description="Attribution methods as pure JAX functions.")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of unexpected errors"
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="explain generated shapes with the embedded model")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("jaxattr-demo"),
        help="output directory (default: ./jaxattr-demo, ignored by git)",
    )
    demo.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the generated images")
    ex = sub.add_parser(
        "explain",
        help="explain a torch model (.pt2 or module:factory)",
        description="Explain a torch model on an image, a .npy batch or a directory of images.",
    )
    ex.add_argument("model", help="a torch.export program (.pt2) or module:factory")
    ex.add_argument("input", help="an image, a .npy array (batch first) or a directory of them")
    ex.add_argument(
        "--method",
        default=None,
        help="one or several, comma-separated: --method ig,lrp,gradcam (see list-methods; "
        "default saliency, or feature_ablation with --tokenizer)",
    )
    ex.add_argument("--target", default="max", help="'max' (default), an int, or i,j,...")
    ex.add_argument("--labels", help="a text file of class names, one a line (for the titles)")
    ex.add_argument(
        "--out",
        default="jaxattr-explain",
        help="a directory (default ./jaxattr-explain, ignored by git): per input a figure "
        "<name>.png and the attributions <name>.npz; or one file: .npy (one method), .npz, "
        ".png",
    )
    ex.add_argument(
        "--overlay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw the heat maps over the input with colour bars (default: on for images)",
    )
    ex.add_argument("--layer", help="layer of grad_cam (default: the model's last convolution)")
    ex.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a .pt2 holding pickled objects (runs code from the file: trusted files only)",
    )
    ex.add_argument(
        "--layout",
        choices=["nchw", "nhwc"],
        default="nchw",
        help="image layout the model expects (default nchw, as torch)",
    )
    ex.add_argument(
        "--tokenizer",
        help="explain a causal language model on a prompt: INPUT is the prompt text (or a "
        ".txt file), MODEL a Hugging Face causal LM (module:factory or .pt2); the "
        "tokenizer is a tokenizer.json file, a Hugging Face tokenizer directory, or "
        "module:factory. --target is then the explained continuation (default: generated)",
    )
    ex.add_argument(
        "--max-new-tokens", type=int, default=25, help="generated target length (--tokenizer)"
    )
    ex.add_argument("--steps", type=int, default=50, help="integration steps")
    ex.add_argument("--samples", type=int, default=20, help="noise samples")
    ex.add_argument("--window", type=int, default=8, help="occlusion window")
    ex.add_argument("--stride", type=int, default=4, help="occlusion stride")
    ex.add_argument(
        "--cache-dir",
        help="cache directory (default $JAXATTR_CACHE_DIR or ~/.cache/jaxattr)",
    )
    ex.add_argument(
        "--no-cache", action="store_true", help="no compilation or program cache on disk"
    )
    for p in (demo, ex):
        p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub.add_parser("list-methods", help="list the methods of `explain`")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxattr`` command; returns the exit status.

    Called without ``argv`` (the installed command, ``python -m jaxattr.cli``), the process
    ends right after the output is flushed, skipping the interpreter's slow teardown of
    torch and JAX (seconds); called with ``argv`` it returns.
    """
    code = _main(argv)
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.list_methods or args.command == "list-methods":
            print(_list_methods())
            return 0
        if args.command == "demo":
            if args.n < 1:
                raise CliError(f"-n must be >= 1, got {args.n}")
            from jaxattr.demo.run import run_demo

            run_demo(args.out, n=args.n, seed=args.seed)
            return 0
        if args.command == "explain":
            for flag in ("steps", "samples", "window", "stride"):
                if getattr(args, flag) < 1:
                    raise CliError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
            explain(args)
            return 0
    except CliError as err:
        print(f"jaxattr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxattr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug or an unforeseen failure: one line too
        if debug:
            raise
        print(
            f"jaxattr: error: unexpected {type(err).__name__}: {_first_line(err)} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    main()
