"""Gradient-family methods: jaxattr against Captum on the seed CNN, same weights.

Usage::

    python benchmarks/bench_methods.py            # full table, writes results/methods.json
    python benchmarks/bench_methods.py --quick    # batch 1 only, fewer repeats

Rows: Saliency, IntegratedGradients (50 steps, gausslegendre) and SmoothGrad (NoiseTunnel,
20 samples) at batch 1 and 16; jaxattr runs the seed CNN through the bridge when it is
available (the product path) and through the hand-written twin otherwise.
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
import torch  # noqa: E402

import jaxattr  # noqa: E402
from benchmarks import harness  # noqa: E402
from tests import twins  # noqa: E402


def seed_cnn_fn(model, how: str = "bridge"):
    """The seed CNN as a JAX function: bridged if the bridge imports, else the twin."""
    if how == "twin":
        return twins.seed_cnn_jax(model), "twin"
    try:
        from jaxattr import bridge

        converted = bridge.from_torch(model, torch.zeros(2, 3, 32, 32))
        return converted, "bridge"
    except Exception as err:  # noqa: BLE001 - fall back to the hand-written twin
        print(f"(bridge unavailable: {type(err).__name__}: {err}; using the twin)")
        return twins.seed_cnn_jax(model), "twin"


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/methods.json")
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
    per_example = harness.forward_and_input_gradient_flops(
        twins.seed_cnn_jax(model), np.zeros((1, 3, 32, 32), np.float32), 3
    )
    print(
        f"matmul throughput {throughput / 1e9:.1f} GFLOP/s; "
        f"forward+input-gradient {per_example / 1e6:.1f} MFLOP per example; model via {path}"
    )
    key = jax.random.key(0)
    harness.ref(model)  # converted above: the reference runs on its own device from here
    sg = jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=20, stdevs=0.1)
    rows = []
    for n in batches:
        x = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
        xt = harness.ref_tensor(x)
        cases = [
            (
                "saliency",
                1,
                lambda: jaxattr.saliency(fn, x, target=3),
                lambda: ca.Saliency(model).attribute(xt, target=3),
            ),
            (
                "integrated_gradients (50)",
                50,
                lambda: jaxattr.integrated_gradients(fn, x, target=3, n_steps=50),
                lambda: ca.IntegratedGradients(model).attribute(xt, target=3, n_steps=50),
            ),
            (
                "smoothgrad (20)",
                20,
                lambda: sg(fn, x, key=key, target=3),
                lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
                    xt, nt_type="smoothgrad", nt_samples=20, stdevs=0.1, target=3
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
                    floor_s=passes * n * per_example / throughput,
                    peak_mb=harness.peak_rss_mb(),
                )
            )
    harness.report(
        rows,
        f"Gradient methods on the seed CNN ({path})",
        args.out,
        {"matmul_gflops": throughput / 1e9, "mflop_per_pass": per_example / 1e6},
    )
    return rows


if __name__ == "__main__":
    main()
