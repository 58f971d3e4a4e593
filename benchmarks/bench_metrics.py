"""Three Quantus metrics: jaxattr.metrics against Quantus 0.6.0, same weights, one process.

Usage::

    python benchmarks/bench_metrics.py            # batch 16, results/metrics.json
    python benchmarks/bench_metrics.py --quick    # batch 4, fewer repeats

The model is the seed CNN (3x32x32, 10 classes): Quantus runs the torch module (its
native setting, explanations by Captum's ``Saliency``), jaxattr its hand-written JAX twin
with the same weights (``tests/twins.py``, explanations by ``jaxattr.saliency``). Rows,
with Quantus's defaults unless stated:

- ``FaithfulnessCorrelation``: 100 runs of 224-feature subsets (the ``black`` baseline):
  101 forward passes of the batch.
- ``PixelFlipping`` with ``features_in_step=64``: 48 cumulative steps, 48 forward passes.
- ``MaxSensitivity``: 200 uniform perturbations (radius 0.2), each explained by saliency
  (forward + input gradient) and the prediction checked.

After timing, each pair is checked to agree on the same draws (the numpy draws Quantus
makes are replaced by jaxattr's, as in tests/test_metrics_quantus.py); the largest
difference is printed. Quantus is timed with its own random draws. The floor is the model
passes a metric needs at the machine's matmul throughput.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402, F401 - torchvision stub before quantus imports zennit

# isort: split
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import quantus  # noqa: E402
import torch  # noqa: E402
from captum.attr import Saliency  # noqa: E402

from benchmarks import harness  # noqa: E402
from jaxattr import _quantus_faithfulness as qf  # noqa: E402
from jaxattr import metrics, saliency  # noqa: E402
from tests import twins  # noqa: E402

if not hasattr(np, "trapz"):  # numpy 2 removed what Quantus 0.6.0 calls
    np.trapz = np.trapezoid
PER_EXAMPLE = {"normalise_axes": (1, 2, 3)}


def torch_saliency(model, inputs, targets, **kwargs):
    x = torch.tensor(np.asarray(inputs), requires_grad=True)
    t = torch.tensor(np.asarray(targets))
    return Saliency(model).attribute(x, target=t, abs=True).detach().numpy()


class Replay:
    def __init__(self, draws):
        self.draws, self.calls = [np.asarray(d) for d in draws], 0

    def __call__(self, *args, size=None, **kwargs):
        out = self.draws[self.calls]
        self.calls += 1
        return out.reshape(size).astype(np.float64) if size is not None else out


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4, 3 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/metrics.json")
    args = parser.parse_args(argv)
    n = 4 if args.quick else 16
    repeat = 3 if args.quick else 5

    net = twins.seed_cnn(0)
    fn = twins.seed_cnn_jax(net)
    x = np.random.default_rng(0).uniform(size=(n, 3, 32, 32)).astype(np.float32)
    y = np.asarray(jnp.argmax(fn(x), -1))
    a = np.asarray(saliency(fn, x, target=y))
    throughput = harness.matmul_flops_per_s()
    pass_flops = harness.forward_and_input_gradient_flops(fn, np.zeros((1, 3, 32, 32),
                                                                       np.float32), 0)
    fwd_flops = harness.xla_flops(fn, np.zeros((1, 3, 32, 32), np.float32))
    print(f"matmul throughput {throughput / 1e9:.1f} GFLOP/s; forward {fwd_flops / 1e6:.1f}, "
          f"forward + gradient {pass_flops / 1e6:.1f} MFLOP per example")
    key = jax.random.key(0)
    qkw = {"disable_warnings": True, "normalise_func_kwargs": PER_EXAMPLE}

    fc_q = quantus.FaithfulnessCorrelation(return_aggregate=False, **qkw)
    pf_q = quantus.PixelFlipping(features_in_step=64, **qkw)
    ms_q = quantus.MaxSensitivity(**qkw)

    def fc_ours():
        return metrics.faithfulness_correlation(fn, x, a, target=y, key=key,
                                                return_aggregate=False)

    def pf_ours():
        return metrics.pixel_flipping(fn, x, a, target=y, features_in_step=64)

    def ms_ours():
        return metrics.max_sensitivity(saliency, fn, x, a, target=y, key=key)

    def fc_ref():
        return fc_q(model=net, x_batch=x, y_batch=y, a_batch=a)

    def pf_ref():
        return pf_q(model=net, x_batch=x, y_batch=y, a_batch=a)

    def ms_ref():
        return ms_q(model=net, x_batch=x, y_batch=y, a_batch=a, explain_func=torch_saliency)

    cases = [
        ("FaithfulnessCorrelation (100 runs x 224 features)", 101 * fwd_flops, fc_ours, fc_ref),
        ("PixelFlipping (features_in_step=64, 48 steps)", 49 * fwd_flops, pf_ours, pf_ref),
        ("MaxSensitivity (200 samples, saliency)", 200 * (pass_flops + fwd_flops) + fwd_flops,
         ms_ours, ms_ref),
    ]
    rows = []
    for name, flops, ours, ref in cases:
        first, t_ours = harness.time_call(ours, repeat=repeat)
        _, t_ref = harness.time_call(ref, repeat=repeat)
        rows.append(harness.Row(
            name=name, batch=n, jaxattr_s=t_ours, reference="Quantus 0.6.0 (torch)",
            reference_s=t_ref, compile_s=first - t_ours, floor_s=n * flops / throughput,
            peak_mb=harness.peak_rss_mb(),
        ))
        print(f"  {name}: jaxattr {t_ours * 1e3:.1f} ms, Quantus {t_ref * 1e3:.1f} ms",
              flush=True)
    # agreement on the same draws (after the timings, so the compile column is the first call)
    idx = np.asarray(qf._subsets(jax.random.split(key, 3)[0], 100, n, 3072, 224))
    saved = np.random.choice, np.random.uniform
    np.random.choice = Replay(list(idx.reshape(-1, 224)))
    agree = {"faithfulness_correlation": np.abs(np.asarray(fc_ref()) - fc_ours()).max()}
    keys = jax.random.split(jax.random.split(key)[0], 200)
    np.random.uniform = Replay([jax.random.uniform(k, (x.size,), minval=-0.2, maxval=0.2)
                                for k in keys])
    agree["max_sensitivity"] = np.abs(np.asarray(ms_ref()) - ms_ours()).max()
    np.random.choice, np.random.uniform = saved
    agree["pixel_flipping"] = np.abs(np.asarray(pf_ref()) - pf_ours()).max()
    for name, d in agree.items():
        print(f"  {name}: max |jaxattr - Quantus| {d:.2e} on the same draws (torch vs JAX "
              f"float32 model)", flush=True)

    harness.report(rows, "Quantus metrics on the seed CNN (torch for Quantus, JAX twin)",
                   args.out, {"matmul_gflops": throughput / 1e9,
                              "agreement_max_abs": {k: float(v) for k, v in agree.items()}})
    return rows


if __name__ == "__main__":
    main()
