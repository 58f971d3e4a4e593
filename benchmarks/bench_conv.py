"""Calibrate the bridge's convolution choice: XLA's convolution vs slice patches vs torch.

For the 3x3 (and 1x1 / strided) convolutions of a ResNet-18 at 224x224 and 64x64 inputs,
of narrower nets (16 to 128 channels) and of the batches integrated gradients makes (50
steps), times the value and the input gradient of each form (jit, median of repeats, JAX's
default settings) and torch's, the CPU seconds to compile both programs of each form, and
reports which form ``bridge.conv.conv2d`` picks. The crossovers in ``bridge/conv.py``
(``SLICES_ALWAYS_PIXELS``, ``SLICES_MIN_DEPTH``, ``SLICES_MAX_ROWS``,
``SLICES_DEEP_PIXELS``) come from this table.

Run: ``python benchmarks/bench_conv.py [--repeats 7] [--out benchmarks/results/conv.md]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import torch
from jaxattr.bridge import conv as C

# (batch, channels in, channels out, map, kernel, stride)
SHAPES = [
    (1, 64, 64, 56, 3, 1), (8, 64, 64, 56, 3, 1),
    (1, 128, 128, 28, 3, 1), (8, 128, 128, 28, 3, 1),
    (1, 256, 256, 14, 3, 1), (8, 256, 256, 14, 3, 1), (16, 256, 256, 14, 3, 1),
    (1, 512, 512, 7, 3, 1), (8, 512, 512, 7, 3, 1), (16, 512, 512, 7, 3, 1),
    (1, 128, 128, 16, 3, 1), (16, 128, 128, 16, 3, 1),
    (1, 256, 256, 8, 3, 1), (16, 256, 256, 8, 3, 1),
    (16, 512, 512, 4, 3, 1), (20, 512, 512, 2, 3, 1),
    (8, 256, 512, 14, 3, 2), (8, 256, 512, 14, 1, 2),
    # narrower nets, and integrated gradients' 50-step batches
    (2, 16, 16, 16, 3, 1), (2, 32, 32, 8, 3, 1), (8, 64, 64, 4, 3, 1), (50, 64, 64, 7, 3, 1),
    (32, 128, 128, 2, 3, 1), (50, 128, 128, 4, 3, 1), (50, 256, 256, 4, 3, 1),
    (50, 256, 256, 7, 3, 1), (50, 512, 512, 7, 3, 1),
]


def _compile_cpu(f, *args) -> float:
    """CPU seconds (all threads: XLA compiles in parallel) to compile ``f`` for ``args``."""
    t = time.process_time()
    f.lower(*args).compile()
    return time.process_time() - t


def _time(f, *args, repeats):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _torch_time(f, repeats):
    f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def row(n, cin, cout, hw, k, s, repeats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin, hw, hw), np.float32)
    w = rng.standard_normal((cout, cin, k, k), np.float32) * 0.05
    pads = [(k // 2, k // 2)] * 2
    out = {}
    for name, fn in [("xla", C.conv2d_xla), ("slices", C.conv2d_slices)]:
        def value(x, w, fn=fn):
            return fn(x, w, (s, s), pads, (1, 1))

        def grad(x, w, fn=fn):
            return jax.grad(lambda x: (fn(x, w, (s, s), pads, (1, 1)) ** 2).sum())(x)

        compile_s = _compile_cpu(jax.jit(value), x, w) + _compile_cpu(jax.jit(grad), x, w)
        out[name] = (_time(jax.jit(value), x, w, repeats=repeats),
                     _time(jax.jit(grad), x, w, repeats=repeats), compile_s)
    a = np.asarray(C.conv2d_xla(x, w, (s, s), pads, (1, 1)))
    b = np.asarray(C.conv2d_slices(x, w, (s, s), pads, (1, 1)))
    err = float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    with torch.no_grad():
        tv = _torch_time(lambda: torch.nn.functional.conv2d(xt, wt, stride=s, padding=k // 2),
                         repeats)

    def tgrad():
        xg = xt.clone().requires_grad_(True)
        (torch.nn.functional.conv2d(xg, wt, stride=s, padding=k // 2) ** 2).sum().backward()

    out["torch"] = (tv, _torch_time(tgrad, repeats), 0.0)
    pick = "slices" if C.use_slices(x.shape, w.shape, (s, s), pads, (1, 1)) else "xla"
    return out, pick, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lines = [
        f"# Convolution forms, value / input gradient in ms (median of {args.repeats})",
        "",
        f"JAX {jax.__version__} ({jax.default_backend()}, default settings), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads. `pick` is what "
        "`bridge.conv.conv2d` uses; `best` is the faster JAX form measured here (value +",
        "gradient); `compile` is CPU seconds to compile both programs (xla / slices).",
        "",
        "| N, Cin->Cout, map, k, stride | xla | slices | torch | compile | pick | best "
        "| max rel. diff |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for shape in SHAPES:
        out, pick, err = row(*shape, repeats=args.repeats)
        best = min(("xla", "slices"), key=lambda k: out[k][0] + out[k][1])
        n, cin, cout, hw, k, s = shape
        cells = [f"{out[f][0]:.2f} / {out[f][1]:.2f}" for f in ("xla", "slices", "torch")]
        compile_cell = f"{out['xla'][2]:.2f} / {out['slices'][2]:.2f}"
        lines.append(f"| {n}, {cin}->{cout}, {hw}x{hw}, {k}, {s} | " + " | ".join(cells)
                     + f" | {compile_cell} | {pick} | {best} | {err:.1e} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
