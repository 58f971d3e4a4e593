"""Perturbation methods: jaxattr against Captum on the seed CNN, same weights, one process.

Usage::

    python benchmarks/bench_perturbation.py            # batch 1 and 16, results/perturbation.json
    python benchmarks/bench_perturbation.py --quick    # batch 1 only, fewer repeats

Rows: Occlusion (window 3x8x8, stride 4: 49 windows), FeatureAblation (4x4 superpixels
shared over channels: 64 features) and ShapleyValueSampling (16 superpixels of 8x8,
n_samples=5: 80 evaluations). Captum runs with perturbations_per_eval=16 (its fast
setting; the default 1 is slower still); jaxattr evaluates the whole perturbation set as
one compiled batch (``batch_size=None``). The floor is the forward passes only (no
gradients): one per perturbation and example, at the machine's matmul throughput.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import captum.attr as ca  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxattr  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks.bench_methods import seed_cnn_fn  # noqa: E402
from tests import twins  # noqa: E402


def superpixels(size: int) -> np.ndarray:
    ids = (np.arange(32)[:, None] // size) * (32 // size) + np.arange(32)[None] // size
    return ids[None, None].astype(np.int64)


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/perturbation.json")
    parser.add_argument(
        "--model",
        choices=["bridge", "twin"],
        default="bridge",
        help="run jaxattr on the bridged model or the hand-written JAX twin",
    )
    args = parser.parse_args(argv)
    batches = [1] if args.quick else [1, 16]
    repeat = 3 if args.quick else 7

    model = twins.seed_cnn(0)
    fn, path = seed_cnn_fn(model, args.model)
    throughput = harness.matmul_flops_per_s()
    forward = harness.xla_flops(twins.seed_cnn_jax(model), np.zeros((1, 3, 32, 32), np.float32))
    print(
        f"matmul throughput {throughput / 1e9:.1f} GFLOP/s; forward {forward / 1e6:.1f} "
        f"MFLOP per example; model via {path}"
    )
    key = jax.random.key(0)
    harness.ref(model)  # converted above: the reference runs on its own device from here
    fm4, fm8 = superpixels(4), superpixels(8)
    rows = []
    for n in batches:
        x = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
        xt = harness.ref_tensor(x)
        cases = [
            (
                "occlusion (3x8x8, stride 4)",
                49,
                lambda x=x: jaxattr.occlusion(
                    fn, x, target=3, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4)
                ),
                lambda xt=xt: ca.Occlusion(model).attribute(
                    xt,
                    target=3,
                    sliding_window_shapes=(3, 8, 8),
                    strides=(3, 4, 4),
                    perturbations_per_eval=16,
                ),
            ),
            (
                "feature_ablation (4x4 superpixels)",
                64,
                lambda x=x: jaxattr.feature_ablation(fn, x, target=3, feature_mask=fm4),
                lambda xt=xt: ca.FeatureAblation(model).attribute(
                    xt, target=3, feature_mask=harness.ref_tensor(fm4), perturbations_per_eval=16
                ),
            ),
            (
                "shapley_value_sampling (16 features, 5 samples)",
                80,
                lambda x=x: jaxattr.shapley_value_sampling(
                    fn, x, key=key, target=3, feature_mask=fm8, n_samples=5
                ),
                lambda xt=xt: ca.ShapleyValueSampling(model).attribute(
                    xt,
                    target=3,
                    feature_mask=harness.ref_tensor(fm8),
                    n_samples=5,
                    perturbations_per_eval=16,
                ),
            ),
        ]
        for name, passes, ours, ref in cases:
            first, t_ours = harness.time_call(ours, repeat=repeat)
            _, t_ref = harness.time_call(ref, repeat=repeat)
            rows.append(
                harness.Row(
                    name=name,
                    batch=n,
                    jaxattr_s=t_ours,
                    reference="Captum",
                    reference_s=t_ref,
                    compile_s=first - t_ours,
                    floor_s=passes * n * forward / throughput,
                    peak_mb=harness.peak_rss_mb(),
                )
            )
    harness.report(
        rows,
        f"Perturbation methods on the seed CNN ({path})",
        args.out,
        {"matmul_gflops": throughput / 1e9, "mflop_per_forward": forward / 1e6},
    )
    return rows


if __name__ == "__main__":
    main()
