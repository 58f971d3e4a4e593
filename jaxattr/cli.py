"""The ``jaxattr`` command.

- ``jaxattr demo``: explain generated shapes with the embedded model (the README's main job).
- ``jaxattr explain MODEL INPUT --method M --target T --out FILE``: explain a torch model
  (a saved ``torch.export`` program ``.pt2``, or ``module:factory`` returning an
  ``nn.Module``) on an image or ``.npy`` input; writes ``.npy`` or a PNG heat map.
- ``jaxattr list-methods`` (or ``--list-methods``): the methods ``explain`` accepts.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class CliError(Exception):
    """A user error: printed as ``jaxattr: error: ...`` with exit status 2."""


def _explain_methods() -> dict[str, tuple[str, Callable[..., Any]]]:
    """``name -> (what it needs, call(model, x, target, args) -> attribution)``."""
    import jax

    import jaxattr

    key = jax.random.key(0)

    def needs_layer(args):
        if not args.layer:
            raise CliError(f"--method {args.method} needs --layer (e.g. --layer layer4)")
        return args.layer

    return {
        "saliency": ("", lambda m, x, t, a: jaxattr.saliency(m, x, target=t)),
        "gradient": ("", lambda m, x, t, a: jaxattr.gradient(m, x, target=t)),
        "input_x_gradient": ("", lambda m, x, t, a: jaxattr.input_x_gradient(m, x, target=t)),
        "integrated_gradients": (
            "--steps",
            lambda m, x, t, a: jaxattr.integrated_gradients(m, x, target=t, n_steps=a.steps),
        ),
        "smoothgrad": (
            "--samples",
            lambda m, x, t, a: jaxattr.smoothgrad(m, x, key=key, target=t, n_iter=a.samples),
        ),
        "occlusion": (
            "--window --stride",
            lambda m, x, t, a: jaxattr.occlusion(m, x, target=t, window=a.window, stride=a.stride),
        ),
        "lrp": (
            "structured",
            lambda m, x, t, a: jaxattr.lrp(m, x, composite=jaxattr.epsilon_plus_flat(), target=t),
        ),
        "guided_backprop": (
            "structured",
            lambda m, x, t, a: jaxattr.guided_backprop(m, x, target=t),
        ),
        "deconvolution": ("structured", lambda m, x, t, a: jaxattr.deconvolution(m, x, target=t)),
        "deep_lift": ("structured", lambda m, x, t, a: jaxattr.deep_lift(m, x, target=t)),
        "grad_cam": (
            "--layer",
            lambda m, x, t, a: jaxattr.grad_cam(
                m,
                x,
                needs_layer(a),
                target=t,
                relu_attributions=True,
                interpolate_to="input",
                interpolate_mode="bilinear",
            ),
        ),
        "guided_grad_cam": (
            "--layer",
            lambda m, x, t, a: jaxattr.guided_grad_cam(m, x, needs_layer(a), target=t),
        ),
    }


def _list_methods() -> str:
    lines = ["methods for `jaxattr explain` (what they need):"]
    for name, (needs, _) in _explain_methods().items():
        lines.append(f"  {name:22s} {needs}")
    lines.append("")
    lines.append(
        "every method of the Python API: python -c 'import jaxattr; print(jaxattr.__all__)'"
    )
    return "\n".join(lines)


def _load_input(path: Path, layout: str) -> np.ndarray:
    """A batch (N, ...) from ``.npy`` or an image file (scaled to [0, 1])."""
    if not path.exists():
        raise CliError(f"INPUT {str(path)!r} does not exist")
    if path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise CliError(f"INPUT {str(path)!r} is not a readable .npy file: {err}") from err
        if not np.issubdtype(x.dtype, np.number):
            raise CliError(f"INPUT {str(path)!r} must hold numbers, got dtype {x.dtype}")
        return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
    try:
        from PIL import Image
    except ImportError as err:
        raise CliError("reading images needs Pillow: pip install Pillow (or pass .npy)") from err
    try:
        img = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    except Exception as err:  # noqa: BLE001
        raise CliError(f"INPUT {str(path)!r} is not a readable image: {err}") from err
    img = img[None]  # (1, H, W, 3)
    return img.transpose(0, 3, 1, 2).copy() if layout == "nchw" else img


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
    return bridge.from_torch(module.eval(), example)


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


def explain(args: argparse.Namespace) -> Path:
    """Run ``jaxattr explain``; returns the written file."""
    methods = _explain_methods()
    if args.method not in methods:
        raise CliError(f"--method must be one of {sorted(methods)}, got {args.method!r}")
    x = _load_input(Path(args.input), args.layout)
    model = _load_model(args.model, x, args.allow_pickle)
    target = _parse_target(args.target)
    if target == "max":
        target = [int(i) for i in np.asarray(model(x)).reshape(x.shape[0], -1).argmax(1)]
    try:
        attr = np.asarray(methods[args.method][1](model, x, target, args))
    except (ValueError, TypeError, KeyError) as err:
        raise CliError(f"{args.method}: {err}") from err
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, attr)
    elif out.suffix == ".png":
        from jaxattr import viz

        axis = 1 if args.layout == "nchw" else -1
        maps = attr.sum(axis=axis) if attr.ndim == 4 else attr.reshape(attr.shape[0], -1)
        tiles = np.stack([viz.imgify(m, cmap="coldnhot", symmetric=True) for m in maps])
        viz.save_png(out, viz.grid(tiles) if len(tiles) > 1 else tiles[0])
    else:
        raise CliError(f"--out must end in .npy or .png, got {str(out)!r}")
    print(f"{args.method} of target {target} -> {out} (shape {tuple(attr.shape)})")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxattr`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="jaxattr", description="Attribution methods as pure JAX functions."
    )
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="explain generated shapes with the embedded model")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("jaxattr-demo"),
        help="output directory (default: ./jaxattr-demo)",
    )
    demo.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the generated images")
    ex = sub.add_parser("explain", help="explain a torch model (.pt2 or module:factory)")
    ex.add_argument("model", help="a torch.export program (.pt2) or module:factory")
    ex.add_argument("input", help="an image file or a .npy array (batch first)")
    ex.add_argument("--method", default="saliency", help="see `jaxattr list-methods`")
    ex.add_argument("--target", default="max", help="'max' (default), an int, or i,j,...")
    ex.add_argument("--out", default="attribution.npy", help="output .npy or .png")
    ex.add_argument("--layer", help="layer name for layer methods (e.g. layer4)")
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
    ex.add_argument("--steps", type=int, default=50, help="integration steps")
    ex.add_argument("--samples", type=int, default=20, help="noise samples")
    ex.add_argument("--window", type=int, default=8, help="occlusion window")
    ex.add_argument("--stride", type=int, default=4, help="occlusion stride")
    sub.add_parser("list-methods", help="list the methods of `explain`")
    args = parser.parse_args(argv)

    if args.list_methods or args.command == "list-methods":
        print(_list_methods())
        return 0
    try:
        if args.command == "demo":
            if args.n < 1:
                raise CliError(f"-n must be >= 1, got {args.n}")
            from jaxattr.demo.run import run_demo

            run_demo(args.out, n=args.n, seed=args.seed)
            return 0
        if args.command == "explain":
            explain(args)
            return 0
    except CliError as err:
        print(f"jaxattr: error: {err}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
