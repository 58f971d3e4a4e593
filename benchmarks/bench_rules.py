"""Rule-based methods: jaxattr against Zennit and Captum, same weights, one process.

Usage::

    python benchmarks/bench_rules.py            # full table, writes results/rules.json
    python benchmarks/bench_rules.py --quick    # batch 1 only, small inputs, 3 repeats

Rows: LRP with EpsilonPlusFlat on VGG-11 and on ResNet-18 (batch norms merged, residual
sums as layers) against Zennit's ``Gradient`` attributor with the same composite and
canonizers; DeepLift on VGG-11 against Captum's ``DeepLift`` (Captum refuses ResNet-18,
whose blocks call one ReLU module twice). The models run through
the torch bridge. The floor is one forward and one input gradient per example.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# isort: split
import tests.conftest  # noqa: E402,F401  (the torchvision stub, before zennit imports)

# isort: split
import captum.attr as ca  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonPlusFlat  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

import jaxattr  # noqa: E402
from benchmarks import harness  # noqa: E402
from jaxattr import bridge  # noqa: E402
from tests import torch_models as tm  # noqa: E402


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 64x64, 3 repeats")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default results/rules.json; none with --quick)",
    )
    args = parser.parse_args(argv)
    if args.out is None and not args.quick:
        args.out = ROOT / "benchmarks/results/rules.json"
    batches = [1] if args.quick else [1, 8]
    size = 64 if args.quick else 224
    repeat = 3 if args.quick else 7
    torch.manual_seed(0)
    vgg = tm.vgg11(num_classes=1000, width_div=4 if args.quick else 1).eval()
    resnet = tm.randomize_norm_stats(tm.resnet18(num_classes=1000).eval())
    example = torch.randn(2, 3, size, size)
    conv_vgg = bridge.from_torch(vgg, example)
    conv_resnet = bridge.from_torch(resnet, example)
    harness.ref(vgg), harness.ref(resnet)  # converted: the references run on their device
    throughput = harness.matmul_flops_per_s()
    rows = []
    for n in batches:
        x = np.random.default_rng(n).normal(size=(n, 3, size, size)).astype(np.float32)
        xt = harness.ref_tensor(x)
        onehot = harness.ref(torch.eye(1000)[[3] * n])

        def zennit_run(model, composite, xt=xt, onehot=onehot):
            def run():
                with Gradient(model=model, composite=composite) as attributor:
                    return attributor(xt.clone().requires_grad_(), onehot)[1]

            return run

        cans = [ResNetCanonizer()]
        cases = [
            (
                "lrp epsilon_plus_flat (VGG-11)",
                conv_vgg,
                lambda x=x: jaxattr.lrp(
                    conv_vgg, x, composite=jaxattr.epsilon_plus_flat(), target=3
                ),
                "Zennit",
                zennit_run(vgg, EpsilonPlusFlat()),
            ),
            (
                "lrp epsilon_plus_flat (ResNet-18)",
                conv_resnet,
                lambda x=x: jaxattr.lrp(
                    conv_resnet,
                    x,
                    composite=jaxattr.epsilon_plus_flat(),
                    target=3,
                    canonizers=[jaxattr.merge_batch_norm],
                ),
                "Zennit",
                zennit_run(resnet, EpsilonPlusFlat(canonizers=cans)),
            ),
            # Captum's DeepLift refuses ResNet-18 (one ReLU module called twice per block)
            (
                "deep_lift (VGG-11)",
                conv_vgg,
                lambda x=x: jaxattr.deep_lift(conv_vgg, x, target=3),
                "Captum",
                lambda xt=xt: ca.DeepLift(vgg).attribute(xt, target=3),
            ),
        ]
        for name, conv, ours, ref_name, ref in cases:
            per_example = harness.forward_and_input_gradient_flops(
                lambda v, conv=conv: conv.fn(conv.params, v), x[:1], 3
            )
            first, t_ours = harness.time_call(ours, repeat=repeat)
            _, t_ref = harness.time_call(ref, repeat=repeat)
            rows.append(
                harness.Row(
                    name=name,
                    batch=n,
                    jaxattr_s=t_ours,
                    reference=ref_name,
                    reference_s=t_ref,
                    compile_s=first - t_ours,
                    floor_s=n * per_example / throughput,
                    peak_mb=harness.peak_rss_mb(),
                )
            )
            print(f"{name} batch {n}: jaxattr {t_ours:.3f}s, {ref_name} {t_ref:.3f}s")
    harness.report(
        rows, f"Rule-based methods ({size}x{size})", args.out, {"matmul_gflops": throughput / 1e9}
    )
    return rows


if __name__ == "__main__":
    main()
