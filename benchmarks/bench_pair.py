"""PAIR saliency methods: jaxattr against the ``saliency`` package (0.2.1), same JAX model.

Usage::

    python benchmarks/bench_pair.py            # batch 1 and 4, results/pair.json
    python benchmarks/bench_pair.py --quick    # batch 1 only, fewer repeats
    python benchmarks/bench_pair.py --segment  # also XRAI with the default segmentation

Both sides run the seed CNN's JAX twin (3x32x32, 10 classes): PAIR through a
``call_model_function`` that returns the jitted JAX input gradient (its HxWxC images
transposed to NCHW), one image at a time as PAIR works; jaxattr on the batch. PAIR runs
with ``batch_size`` = its number of path steps (its fastest setting; its default 1 calls
the model once per step). Rows, with PAIR's defaults:

- Blur IG: ``max_sigma=50, steps=100, grad_step=0.01``.
- Guided IG: ``steps=200, fraction=0.25, max_dist=0.02``, baseline 0.
- XRAI (full and fast) on precomputed segments (Felzenszwalb at PAIR's six scales on the
  32x32 images, dilated; about 60 masks per image): PAIR's integrated gradients (100
  steps, two baselines) plus the greedy region selection.
- With ``--segment``: XRAI with the default segmentation on both sides (PAIR's
  scikit-image Felzenszwalb on the image resized to 224x224; jaxattr's numpy one).

The floor is the model passes a method needs (forward + input gradient per step and
example) at the machine's matmul throughput; XRAI's greedy selection and segmentation
have no floor of that kind.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import saliency.core as sc  # noqa: E402
import saliency.core.guided_ig as pair_guided_ig  # noqa: E402

from benchmarks import harness  # noqa: E402
from jaxattr import _pair  # noqa: E402
from tests import twins  # noqa: E402

TARGET = 3


def _numpy2_quantile() -> None:
    """PAIR's Guided IG calls ``np.quantile(..., interpolation=)`` (gone in NumPy 2)."""
    shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    shim.quantile = lambda a, q, interpolation="linear", **kw: np.quantile(
        a, q, method=interpolation, **kw
    )
    pair_guided_ig.np = shim


def pair_callback(fn):
    grad = jax.jit(jax.grad(lambda x: fn(x)[:, TARGET].sum()))

    def call_model(x_batch, call_model_args=None, expected_keys=None):
        xb = jnp.asarray(np.asarray(x_batch, np.float32).transpose(0, 3, 1, 2))
        return {sc.INPUT_OUTPUT_GRADIENTS: np.asarray(grad(xb)).transpose(0, 2, 3, 1)}

    return call_model


def hwc(a) -> np.ndarray:
    return np.asarray(a).transpose(1, 2, 0)


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--segment", action="store_true", help="add XRAI with segmentation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pair.json")
    args = parser.parse_args(argv)
    batches = [1] if args.quick else [1, 4]
    repeat = 3 if args.quick else 5
    _numpy2_quantile()

    fn = twins.seed_cnn_jax(twins.seed_cnn(0))
    call_model = pair_callback(fn)
    throughput = harness.matmul_flops_per_s()
    pass_flops = harness.forward_and_input_gradient_flops(
        fn, np.zeros((1, 3, 32, 32), np.float32), TARGET
    )
    print(f"matmul throughput {throughput / 1e9:.1f} GFLOP/s; forward + gradient "
          f"{pass_flops / 1e6:.1f} MFLOP per example")

    rows = []
    for n in batches:
        x = np.random.default_rng(n).uniform(size=(n, 3, 32, 32)).astype(np.float32)
        images = [hwc(x[i]) for i in range(n)]
        segs = _pair.xrai_segments(x, resize=None)
        masks = [[m for m in segs[i] if m.any()] for i in range(n)]
        full = _pair.XRAIParameters()
        fast = _pair.XRAIParameters(algorithm="fast")
        cases = [
            ("blur_ig (100 steps)", 100,
             lambda x=x: _pair.blur_ig(fn, x, target=TARGET),
             lambda: [sc.BlurIG().GetMask(im, call_model, batch_size=100) for im in images]),
            ("guided_ig (200 steps)", 200,
             lambda x=x: _pair.guided_ig(fn, x, target=TARGET),
             lambda: [sc.GuidedIG().GetMask(im, call_model) for im in images]),
            ("xrai full (given segments)", 200,
             lambda x=x, s=segs: _pair.xrai(fn, x, target=TARGET, segments=s,
                                            extra_parameters=full),
             lambda m=masks: [sc.XRAI().GetMask(im, call_model, segments=m[i], batch_size=100)
                              for i, im in enumerate(images)]),
            ("xrai fast (given segments)", 200,
             lambda x=x, s=segs: _pair.xrai(fn, x, target=TARGET, segments=s,
                                            extra_parameters=fast),
             lambda m=masks: [sc.XRAI().GetMask(
                 im, call_model, segments=m[i], batch_size=100,
                 extra_parameters=sc.XRAIParameters(algorithm="fast"))
                 for i, im in enumerate(images)]),
        ]
        if args.segment:
            cases.append((
                "xrai full (default segmentation)", 200,
                lambda x=x: _pair.xrai(fn, x, target=TARGET),
                lambda: [sc.XRAI().GetMask(im, call_model, batch_size=100) for im in images],
            ))
        for name, passes, ours, ref in cases:
            first, t_ours = harness.time_call(ours, repeat=repeat)
            _, t_ref = harness.time_call(ref, repeat=repeat)
            rows.append(harness.Row(
                name=name, batch=n, jaxattr_s=t_ours, reference="PAIR saliency 0.2.1",
                reference_s=t_ref, compile_s=first - t_ours,
                floor_s=passes * n * pass_flops / throughput,
                peak_mb=harness.peak_rss_mb(),
            ))
            print(f"  {name} batch {n}: jaxattr {t_ours * 1e3:.1f} ms, PAIR {t_ref * 1e3:.1f} ms",
                  flush=True)
    harness.report(rows, "PAIR saliency methods on the seed CNN (JAX twin, both sides)",
                   args.out, {"matmul_gflops": throughput / 1e9,
                              "mflop_per_pass": pass_flops / 1e6})
    return rows


if __name__ == "__main__":
    main()
