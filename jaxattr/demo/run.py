"""``jaxattr demo``: explain a few generated shapes with one method of every family.

For each method the demo records the compile time (first call) and the run time (a
second call), and scores localisation against the known shape masks:

- *pointing game*: the share of images whose attribution peak (``|attr|`` summed over
  channels) falls inside the shape;
- *relevance mass*: the share of ``|attr|`` that lies inside the shape (Arras et al.,
  2022), against the shape's share of the image as the chance level.

``docs/demo.md`` explains the figure and the table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxattr
from jaxattr.demo.data import CLASSES, make_shapes
from jaxattr.demo.model import demo_model, load_model


@dataclasses.dataclass
class DemoMethod:
    """One demo entry: a family, a display name and ``call(fn, x, target) -> attr``."""

    family: str
    name: str
    call: Callable[[Callable, jax.Array, Any], Any]
    requires: str = ""  # the jaxattr name it needs; skipped (and reported) when missing


def _methods(key: jax.Array, structured: Any) -> list[DemoMethod]:
    nt = jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=16, stdevs=0.2)
    composite = jaxattr.epsilon_plus_flat()
    return [
        DemoMethod("gradient", "saliency", lambda f, x, t: jaxattr.saliency(f, x, target=t)),
        DemoMethod(
            "gradient", "input_x_gradient", lambda f, x, t: jaxattr.input_x_gradient(f, x, target=t)
        ),
        DemoMethod(
            "path",
            "integrated_gradients",
            lambda f, x, t: jaxattr.integrated_gradients(f, x, target=t, n_steps=32),
        ),
        DemoMethod(
            "noise", "smoothgrad (noise_tunnel)", lambda f, x, t: nt(f, x, key=key, target=t)
        ),
        DemoMethod(
            "noise",
            "gradient_shap",
            lambda f, x, t: jaxattr.gradient_shap(
                f,
                x,
                baselines=jnp.zeros((1, *x.shape[1:])),
                key=key,
                n_samples=16,
                stdevs=0.1,
                target=t,
            ),
        ),
        DemoMethod(
            "perturbation",
            "occlusion (6x6, stride 2)",
            lambda f, x, t: jaxattr.occlusion(
                f, x, target=t, sliding_window_shapes=(6, 6, 3), strides=(2, 2, 3)
            ),
        ),
        DemoMethod(
            "rules",
            "lrp (epsilon_plus_flat)",
            lambda f, x, t: jaxattr.lrp(structured, x, composite=composite, target=t),
        ),
        DemoMethod(
            "rules",
            "guided_backprop",
            lambda f, x, t: jaxattr.guided_backprop(structured, x, target=t),
        ),
        DemoMethod(
            "layers",
            "grad_cam (conv3)",
            lambda f, x, t: jaxattr.grad_cam(
                structured,
                x,
                "conv3",
                target=t,
                channel_axis=-1,
                relu_attributions=True,
                interpolate_to="input",
                interpolate_mode="bilinear",
            ),
        ),
    ]


def localisation(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """``(pointing game hit rate, mean relevance mass inside the masks)``."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    hits = masks.reshape(n, -1)[np.arange(n), flat.argmax(1)]
    mass = (flat * masks.reshape(n, -1)).sum(1) / np.maximum(flat.sum(1), 1e-12)
    return float(hits.mean()), float(mass.mean())


def run_demo(
    out: Path | None = Path("jaxattr-demo"), n: int = 4, seed: int = 2026, quiet: bool = False
) -> dict[str, Any]:
    """Run the demo and return its report (also written to ``out`` when given).

    Args:
        out: Output directory for ``demo.png`` (the figure: one row per image, one column
            per method), ``demo.md`` (the table), ``demo.json``, ``inputs/`` (the images
            as PNG pixels, for ``jaxattr explain jaxattr.demo.torch_model:demo_cnn``) and
            ``labels.txt`` (the class names, for ``--labels``);
            ``None`` writes nothing. A directory this function creates gets a
            ``.gitignore`` holding ``*``, so that git ignores it wherever it is made
            (:func:`jaxattr.cli.make_output_dir`).
        n: Number of images to explain.
        seed: Seed of the generated images.
        quiet: Do not print the table.

    Returns:
        A dict with the accuracy on the explained images, one row per method (family,
        name, compile and run time, pointing game, relevance mass), the chance level and
        the skipped methods.
    """
    fn, _, _ = load_model()
    structured = demo_model()
    images, labels, masks = make_shapes(n, seed=seed)
    x = jnp.asarray(images)
    logits = np.asarray(fn(x))
    pred = logits.argmax(1)
    target = [int(t) for t in labels]
    rows, skipped, maps = [], [], {}
    key = jax.random.key(seed)
    for m in _methods(key, structured):
        if m.requires and not hasattr(jaxattr, m.requires):
            skipped.append(m.name)
            continue
        t0 = time.perf_counter()
        jax.block_until_ready(m.call(fn, x, target))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        attr = jax.block_until_ready(m.call(fn, x, target))
        run = time.perf_counter() - t0
        maps[m.name] = np.asarray(attr, np.float32).sum(-1)  # signed, channels summed
        hit, mass = localisation(np.abs(maps[m.name]), masks)
        rows.append(
            {
                "family": m.family,
                "method": m.name,
                "compile_s": max(first - run, 0.0),
                "run_s": run,
                "pointing_game": hit,
                "relevance_mass": mass,
            }
        )
    report = {
        "images": n,
        "accuracy": float((pred == labels).mean()),
        "classes": [CLASSES[i] for i in labels],
        "chance_mass": float(masks.mean()),
        "rows": rows,
        "skipped": skipped,
    }
    table = format_table(report)
    if not quiet:
        print(table)
    if out is not None:
        from jaxattr.cli import make_output_dir

        out = make_output_dir(Path(out))
        (out / "demo.md").write_text(table + "\n")
        (out / "demo.json").write_text(json.dumps(report, indent=2))
        inputs = write_inputs(out / "inputs", images, labels)
        (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
        png = write_figure(out / "demo.png", images, masks, maps, labels, pred, rows)
        report["png"] = str(png)
        if not quiet:
            print(
                f"\nwrote {png} (the figure), {out / 'demo.md'}, {out / 'demo.json'} and "
                f"{len(inputs)} input images under {out / 'inputs'}"
            )
    return report


def write_inputs(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """The demo images as PNG pixels ``(x + 0.5) / 2`` (see ``jaxattr.demo.torch_model``)."""
    from jaxattr import viz

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.clip((np.asarray(images) + 0.5) / 2.0, 0.0, 1.0)
    paths = []
    for i, (img, label) in enumerate(zip(pixels, labels, strict=True)):
        path = folder / f"{i:02d}_{CLASSES[int(label)]}.png"
        viz.save_png(path, (img * 255).round().astype(np.uint8))
        paths.append(path)
    return paths


def write_figure(
    path: Path,
    images: np.ndarray,
    masks: np.ndarray,
    maps: dict,
    labels: np.ndarray,
    pred: np.ndarray,
    rows: list[dict],
) -> Path:
    """The demo's figure (:func:`jaxattr.demo.figure.demo_figure`; the plain grid of
    :func:`write_grid` without matplotlib)."""
    from jaxattr.demo.figure import demo_figure, have_matplotlib

    if not have_matplotlib():
        return write_grid(path, images, masks, maps)
    row_labels = [
        f"{CLASSES[int(t)]}" + ("" if p == t else f"\n(predicted {CLASSES[int(p)]})")
        for t, p in zip(labels, pred, strict=True)
    ]
    notes = {
        r["method"]: f"PG {r['pointing_game']:.0%}  RM {r['relevance_mass']:.0%}" for r in rows
    }
    title = (
        "jaxattr demo: attributions for each image's true class (rows); PG = pointing game, "
        "RM = relevance mass (docs/demo.md)"
    )
    return demo_figure(path, images, masks, maps, row_labels, notes, title)


def format_table(report: dict[str, Any]) -> str:
    """The demo's markdown table."""
    lines = [
        f"jaxattr demo: {report['images']} generated shapes "
        f"({', '.join(report['classes'])}), model accuracy {report['accuracy']:.0%}",
        "",
        "| family | method | compile | run | pointing game | relevance mass |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['family']} | {r['method']} | {r['compile_s']:.2f} s | "
            f"{r['run_s'] * 1e3:.1f} ms | {r['pointing_game']:.0%} | {r['relevance_mass']:.0%} |"
        )
    lines.append("")
    lines.append(f"relevance mass by chance (shape area): {report['chance_mass']:.0%}")
    if report["skipped"]:
        lines.append(f"skipped (not available): {', '.join(report['skipped'])}")
    return "\n".join(lines)


def write_grid(
    path: Path, images: np.ndarray, masks: np.ndarray, maps: dict, scale: int = 3
) -> Path:
    """The figure without matplotlib: one row per image, the input then one column per
    method, no text.

    Signed maps use the blue-white-red colormap, symmetric around zero (red positive, blue
    negative, white zero); the true shape's outline is drawn in green on the input.
    """
    from jaxattr import viz

    tiles = []
    for i in range(images.shape[0]):
        img = np.clip(images[i], 0.0, 1.0)
        edge = (masks[i] ^ np.roll(masks[i], 1, 0)) | (masks[i] ^ np.roll(masks[i], 1, 1))
        img = np.where(edge[..., None], np.array([0.0, 1.0, 0.0], np.float32), img)
        tiles.append(viz.imgify(img, vmin=0.0, vmax=1.0))
        for name in maps:
            tiles.append(viz.imgify(maps[name][i], cmap="bwr", symmetric=True))
    tiles = [t.repeat(scale, 0).repeat(scale, 1) for t in tiles]
    tiles = [np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles]
    sheet = viz.grid(np.stack(tiles), shape=(images.shape[0], 1 + len(maps)))
    viz.save_png(path, sheet)
    return path
