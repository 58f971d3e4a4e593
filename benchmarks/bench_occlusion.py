"""Occlusion on ResNet-18 and VGG-11 (224x224): jaxattr's incremental path against Captum.

Usage::

    python benchmarks/bench_occlusion.py            # both models, batch 1 and 8
    python benchmarks/bench_occlusion.py --quick    # 112x112, batch 1, Captum at ppe 16 only
    python benchmarks/bench_occlusion.py --models VGG-11 --max-images 256 --ppe-batched 16,32

Occlusion with a 3x16x16 window at stride 8 (27 x 27 = 729 windows at 224), target 3,
baseline 0, the models of ``tests/torch_models.py`` (torchvision's names, random weights,
ResNet-18's batch-norm statistics randomised) converted with the torch bridge. Captum's
``Occlusion`` runs with each ``perturbations_per_eval`` of ``--ppe`` (as many as fit in
``--max-images`` images per forward pass) and the fastest is the reference; at batch 8
only the two fastest settings of batch 1 that fit are run (each Captum call there takes
minutes), or ``--ppe-batched``. jaxattr runs ``occlusion(..., incremental=True)`` (what
the default picks for these models) and, at ``--full-batches``, ``incremental=False``
(the whole model per window, ``vmap``-ped).

Times are CPU seconds per call (``time.process_time``: both cores of every thread pool
counted, so other jobs on the machine weigh less than on wall time), the median of
``--repeat`` calls for jaxattr after a first call whose extra time is reported as compile
time, one call for Captum; wall seconds are recorded beside them. Agreement: the largest
difference between jaxattr's attribution and Captum's, and between the incremental and the
full path, relative to the largest attribution.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import captum.attr as ca  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jaxattr  # noqa: E402
from benchmarks import harness  # noqa: E402
from jaxattr import bridge  # noqa: E402
from tests import torch_models as tm  # noqa: E402

WINDOW, STRIDE, TARGET = (3, 16, 16), (3, 8, 8), 3


def _timed(f):
    """``(result, cpu_s, wall_s)`` of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = f()
    jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out
    )
    return out, time.process_time() - c0, time.perf_counter() - w0


def _models(quick: bool):
    torch.manual_seed(0)
    return {
        "ResNet-18": tm.randomize_norm_stats(tm.resnet18(num_classes=1000)).eval(),
        "VGG-11": tm.vgg11(num_classes=1000, width_div=4 if quick else 1).eval(),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="ResNet-18,VGG-11")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument(
        "--ppe",
        default="1,16,64,256",
        help="Captum perturbations_per_eval tried at the first batch size",
    )
    parser.add_argument(
        "--ppe-batched",
        default="",
        help="settings tried at the other batch sizes (default: the two "
        "fastest of the first batch size that fit --max-images)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=512,
        help="skip Captum settings with more images per forward pass",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--full-batches", default="1", help="batch sizes at which incremental=False is timed too"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/occlusion.json")
    args = parser.parse_args(argv)
    size = 112 if args.quick else 224
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    ppes = [16] if args.quick else [int(p) for p in args.ppe.split(",")]
    models = _models(args.quick)
    rows, sweep = [], []
    print(f"load average {os.getloadavg()}", flush=True)
    for name in args.models.split(","):
        module = models[name]
        conv = bridge.from_torch(module, torch.zeros(2, 3, size, size))
        best_ppe: list[int] = []
        for n in batches:
            x = np.random.default_rng(n).uniform(size=(n, 3, size, size)).astype(np.float32)
            xt = torch.from_numpy(x)
            kw = dict(target=TARGET, sliding_window_shapes=WINDOW, strides=STRIDE)
            plan_windows = (-(-(size - 16) // 8) + 1) ** 2

            # jaxattr first: its peak memory is not inflated by torch's
            def ours(inc=True, x=x):
                return jaxattr.occlusion(conv, x, incremental=inc, **kw)

            first, first_cpu, first_wall = _timed(ours)
            runs = [_timed(ours)[1:] for _ in range(args.repeat)]
            cpu = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            full = full_cpu = full_wall = None
            if str(n) in args.full_batches.split(","):
                full = _timed(lambda: ours(False))[0]  # compiles
                full_cpu, full_wall = _timed(lambda: ours(False))[1:]
            # Captum, each setting once
            settings = (
                ppes
                if n == batches[0]
                else (
                    [int(p) for p in args.ppe_batched.split(",")] if args.ppe_batched else best_ppe
                )
            )
            ref_best = None
            tried = 0
            for ppe in settings:
                if n != batches[0] and not args.ppe_batched and tried == 2:
                    break
                if n != batches[0] and not args.ppe_batched and ppe * n > args.max_images:
                    continue  # the next fastest setting of the first batch size instead
                if ppe * n > args.max_images:
                    print(f"  skip Captum ppe={ppe} at batch {n}: {ppe * n} images", flush=True)
                    continue
                with torch.no_grad():
                    ref, rc, rw = _timed(
                        lambda ppe=ppe, xt=xt: ca.Occlusion(module).attribute(
                            xt, perturbations_per_eval=ppe, **kw
                        )
                    )
                tried += 1
                sweep.append(
                    {
                        "model": name,
                        "batch": n,
                        "ppe": ppe,
                        "cpu_s": rc,
                        "wall_s": rw,
                        "load": os.getloadavg()[0],
                    }
                )
                print(
                    f"  {name} b={n} Captum ppe={ppe}: cpu {rc:.1f} s, wall {rw:.1f} s", flush=True
                )
                if ref_best is None or rc < ref_best[1]:
                    ref_best = (ppe, rc, rw, ref.numpy())
            if n == batches[0]:
                best_ppe = [
                    s["ppe"]
                    for s in sorted(
                        (s for s in sweep if s["model"] == name and s["batch"] == n),
                        key=lambda s: s["cpu_s"],
                    )
                ]
            ours_np = np.asarray(first)
            scale = float(np.abs(ref_best[3]).max())
            row = {
                "model": name,
                "batch": n,
                "size": size,
                "windows": plan_windows,
                "captum_ppe": ref_best[0],
                "captum_cpu_s": ref_best[1],
                "captum_wall_s": ref_best[2],
                "jaxattr_cpu_s": cpu,
                "jaxattr_wall_s": wall,
                "compile_s": first_wall - wall,
                "speedup_cpu": ref_best[1] / cpu,
                "speedup_wall": ref_best[2] / wall,
                "max_abs_diff_vs_captum": float(np.abs(ours_np - ref_best[3]).max()),
                "max_abs_attr": scale,
                "full_cpu_s": full_cpu,
                "full_wall_s": full_wall,
                "max_abs_diff_vs_full": None
                if full is None
                else float(np.abs(ours_np - np.asarray(full)).max()),
                "load": os.getloadavg()[0],
                "peak_mb": harness.peak_rss_mb(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows, "captum_sweep": sweep, "environment": harness.environment()}
    harness.write_results(result, args.out, _markdown(result))
    return result


def _markdown(result: dict) -> str:
    lines = [
        "### Occlusion on ResNet-18 / VGG-11: incremental vs Captum",
        "",
        "| model | batch | windows | Captum best ppe | Captum cpu s (wall) | jaxattr cpu s "
        "(wall) | speedup cpu (wall) | compile s | full path cpu s | max abs diff vs Captum "
        "/ max attr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        full = "-" if r["full_cpu_s"] is None else f"{r['full_cpu_s']:.1f}"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['windows']} | {r['captum_ppe']} | "
            f"{r['captum_cpu_s']:.1f} ({r['captum_wall_s']:.1f}) | {r['jaxattr_cpu_s']:.1f} "
            f"({r['jaxattr_wall_s']:.1f}) | **{r['speedup_cpu']:.2f}x** "
            f"({r['speedup_wall']:.2f}x) | {r['compile_s']:.1f} | {full} | "
            f"{r['max_abs_diff_vs_captum']:.2g} / {r['max_abs_attr']:.2g} |"
        )
    lines += ["", "Captum sweep (cpu s, wall s):", ""]
    for s in result["captum_sweep"]:
        lines.append(
            f"- {s['model']} batch {s['batch']} ppe {s['ppe']}: {s['cpu_s']:.1f}, "
            f"{s['wall_s']:.1f} (load {s['load']:.1f})"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
