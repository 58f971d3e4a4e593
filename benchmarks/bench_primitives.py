"""What bounds the conv-net rows on CPU: XLA's convolutions and dense products vs torch's.

Three tables, JAX's default settings (no ``XLA_FLAGS``), torch on the same threads, jit,
median of ``--repeats`` calls on device arrays:

1. **Convolution forms** on ResNet-18's and VGG-11's 3x3 shapes at 224 (batch 1 and 8),
   value and input gradient in ms: XLA's convolution (``bridge.conv.conv2d_xla``), slice
   patches (``conv2d_slices``), Winograd F(2x2, 3x3) (written here: 16 batched products
   with 2.25x fewer multiplications than the direct form, plus the input, weight and
   output transforms), what ``bridge.conv.conv2d`` picks, and torch (oneDNN).
2. **XLA's CPU library paths**, chosen per program (``Lowered.compile(compiler_options=)``,
   not a process flag): the default against the XNNPACK, YNNPACK and oneDNN fusion types
   this jaxlib accepts, on one convolution and one dense product.
3. **Dense products** of the seed CNN's hidden layer (16384 -> 1024) and of a BERT-sized
   layer at the batch sizes the methods make: XLA's ``dot_general`` with torch's weight
   layout (``x @ w.T``) and with a transposed weight (``x @ w``), against torch's
   ``linear`` (MKL).

Run: ``python benchmarks/bench_primitives.py [--repeats 7] [--quick]``; writes
``benchmarks/results/primitives.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax import lax  # noqa: E402
from jaxattr.bridge import conv as C  # noqa: E402

from benchmarks import harness  # noqa: E402

#: (batch, channels in, channels out, map): 3x3, stride 1, padding 1
CONV_SHAPES = [
    (1, 64, 64, 56), (1, 128, 128, 28), (1, 256, 256, 14), (1, 512, 512, 7),
    (1, 64, 128, 112), (1, 256, 256, 56), (1, 512, 512, 28), (1, 512, 512, 14),
    (8, 64, 64, 56), (8, 128, 128, 28), (8, 256, 256, 14), (8, 512, 512, 7),
    (8, 512, 512, 14), (32, 256, 256, 14), (32, 512, 512, 7),
]  # fmt: skip
#: (rows, in, out)
DOT_SHAPES = [(1, 16384, 1024), (16, 16384, 1024), (50, 16384, 1024), (1024, 256, 1024)]
LIBRARY = "LIBRARY_FUSION_TYPE_{}"
OPTIONS = {
    "default": {},
    "xnn conv": {"xla_cpu_experimental_xnn_fusion_type": LIBRARY.format("INDIVIDUAL_CONVOLUTION")},
    "xnn dot": {"xla_cpu_experimental_xnn_fusion_type": LIBRARY.format("INDIVIDUAL_DOT")},
    "ynn conv": {"xla_cpu_experimental_ynn_fusion_type": LIBRARY.format("INDIVIDUAL_CONVOLUTION")},
    "ynn dot": {"xla_cpu_experimental_ynn_fusion_type": LIBRARY.format("DOT")},
    "onednn conv": {
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_onednn_fusion_type": LIBRARY.format("INDIVIDUAL_CONVOLUTION"),
    },
    "onednn dot": {
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_onednn_fusion_type": LIBRARY.format("DOT"),
    },
}
PAD = [(1, 1), (1, 1)]


_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
#: ``G g G^T`` as one (16, 9) matrix on the flattened 3x3 taps
_GG = np.kron(_G, _G)


def winograd_weight(w: jnp.ndarray) -> jnp.ndarray:
    """Winograd F(2x2, 3x3)'s weight transform ``G g G^T``: (O, C, 3, 3) -> (16, O, C).

    Each of the 16 outputs is a sum of at most 9 scaled taps, written out so that XLA
    fuses them into one pass over the weight (5 ms for a 512x512x3x3 weight on 2 CPUs; the
    same as an ``einsum`` took 34 ms).
    """
    o, c = w.shape[:2]
    taps = w.reshape(o, c, 9)
    rows = []
    for k in range(16):
        terms = [taps[:, :, t] * float(_GG[k, t]) for t in range(9) if _GG[k, t] != 0]
        rows.append(sum(terms[1:], terms[0]))
    return jnp.stack(rows)


def winograd_f2x3(x: jnp.ndarray, w: jnp.ndarray, u: jnp.ndarray | None = None) -> jnp.ndarray:
    """3x3, stride 1, padding 1 convolution by Winograd's F(2x2, 3x3) (Lavin & Gray, 2016).

    Args:
        x: Input (N, C, H, W).
        w: Weight (O, C, 3, 3), torch's layout (cross-correlation).
        u: The transformed weight (:func:`winograd_weight`), if already computed.

    Returns:
        The output (N, O, H, W): per 2x2 output tile, ``A^T [(G g G^T) * (B^T d B)] A``,
        the elementwise products summed over channels as 16 batched matrix products.
    """
    n, c, h, wd = x.shape
    o = w.shape[0]
    u = winograd_weight(w) if u is None else u
    th, tw = -(-h // 2), -(-wd // 2)
    xp = jnp.pad(
        jnp.transpose(x, (0, 2, 3, 1)), ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - wd), (0, 0))
    )
    d = [
        [
            lax.slice(xp, (0, a, b, 0), (n, a + 2 * th - 1, b + 2 * tw - 1, c), (1, 2, 2, 1))
            for b in range(4)
        ]
        for a in range(4)
    ]

    def bt(v):  # B^T applied along one tile axis
        return [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]

    cols = [bt([d[a][b] for a in range(4)]) for b in range(4)]
    v = [bt([cols[b][r] for b in range(4)]) for r in range(4)]
    vs = jnp.stack([v[r][s] for r in range(4) for s in range(4)]).reshape(16, n * th * tw, c)
    m = lax.dot_general(vs, u, (((2,), (2,)), ((0,), (0,)))).reshape(4, 4, n, th, tw, o)
    t0, t1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]  # A^T along the first tile axis
    y = jnp.stack(
        [
            jnp.stack([t[0] + t[1] + t[2], t[1] - t[2] - t[3]], 3)  # ... and the second
            for t in (t0, t1)
        ],
        2,
    )  # (N, th, 2, tw, 2, O)
    y = y.reshape(n, 2 * th, 2 * tw, o)[:, :h, :wd]
    return jnp.transpose(y, (0, 3, 1, 2))


CONV_FORMS = {
    "xla": lambda x, w: C.conv2d_xla(x, w, (1, 1), PAD, (1, 1)),
    "slices": lambda x, w: C.conv2d_slices(x, w, (1, 1), PAD, (1, 1)),
    "winograd": winograd_f2x3,
    "pick": lambda x, w: C.conv2d(x, w, (1, 1), PAD, (1, 1)),
}


def _ms(f, repeats: int) -> float:
    """Median ms of ``f()`` after a first call (``harness.time_call``)."""
    return harness.time_call(f, repeat=repeats)[1] * 1e3


def conv_table(shapes, repeats: int) -> list[dict]:
    """Value / input-gradient ms of each convolution form and torch's, per shape."""
    rows = []
    rng = np.random.default_rng(0)
    for n, c, o, h in shapes:
        x = jnp.asarray(rng.standard_normal((n, c, h, h), np.float32))
        w = jnp.asarray(rng.standard_normal((o, c, 3, 3), np.float32) * 0.05)
        ref = np.asarray(CONV_FORMS["xla"](x, w), np.float64)
        ct = jnp.asarray(rng.standard_normal(ref.shape, np.float32))
        row = {"shape": [n, c, o, h]}
        for name, form in CONV_FORMS.items():
            value = jax.jit(form)
            grad = jax.jit(lambda x, w, ct, form=form: jax.vjp(lambda v: form(v, w), x)[1](ct)[0])
            err = np.abs(np.asarray(value(x, w), np.float64) - ref).max() / np.abs(ref).max()
            row[name] = [
                _ms(lambda: value(x, w), repeats),
                _ms(lambda: grad(x, w, ct), repeats),
                float(err),
            ]
        u = winograd_weight(w)
        value = jax.jit(lambda x, w, u: winograd_f2x3(x, w, u))
        grad = jax.jit(lambda x, w, u, ct: jax.vjp(lambda v: winograd_f2x3(v, w, u), x)[1](ct)[0])
        row["winograd, G g G^T given"] = [
            _ms(lambda: value(x, w, u), repeats),
            _ms(lambda: grad(x, w, u, ct), repeats),
        ]
        xt, wt, ctt = (torch.from_numpy(np.array(a)) for a in (x, w, ct))
        row["torch"] = [
            _ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=1), repeats),
            _ms(lambda: torch.nn.grad.conv2d_input(xt.shape, wt, ctt, padding=1), repeats),
        ]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def options_table(repeats: int) -> list[dict]:
    """One convolution and one dense product compiled with each CPU library option."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((8, 64, 56, 56), np.float32))
    w = jnp.asarray(rng.standard_normal((64, 64, 3, 3), np.float32) * 0.05)
    a = jnp.asarray(rng.standard_normal((16, 16384), np.float32))
    b = jnp.asarray(rng.standard_normal((1024, 16384), np.float32))
    cases = {
        "conv 8x64x56x56, 3x3": (CONV_FORMS["xla"], (x, w)),
        "dot 16x16384 @ 16384x1024": (
            lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ()))),
            (a, b),
        ),
    }
    rows = []
    for case, (f, args) in cases.items():
        ref = np.asarray(jax.jit(f)(*args), np.float64)
        default_hlo = jax.jit(f).lower(*args).compile().as_text()
        for name, opts in OPTIONS.items():
            row = {"case": case, "option": name, "compiler_options": opts}
            try:
                compiled = jax.jit(f).lower(*args).compile(compiler_options=opts or None)
            except Exception as err:  # noqa: BLE001 - an option this jaxlib does not know
                row["error"] = str(err).splitlines()[0][:120]
            else:
                row["ms"] = _ms(lambda: compiled(*args), repeats)
                out = np.asarray(compiled(*args), np.float64)
                row["max_rel_diff"] = float(np.abs(out - ref).max() / np.abs(ref).max())
                row["same_program"] = compiled.as_text() == default_hlo
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def dot_table(shapes, repeats: int) -> list[dict]:
    """``x @ w.T`` (torch's layout) and ``x @ w`` in XLA, and torch's ``linear``, in ms."""
    rows = []
    rng = np.random.default_rng(2)
    for m, k, n in shapes:
        x = jnp.asarray(rng.standard_normal((m, k), np.float32))
        w = jnp.asarray(rng.standard_normal((n, k), np.float32))
        wt = jnp.asarray(np.ascontiguousarray(np.asarray(w).T))
        nt = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ()))))
        nn = jax.jit(lambda x, w: x @ w)
        xt, wtt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(w))
        row = {
            "shape": [m, k, n],
            "xla_w_T": _ms(lambda: nt(x, w), repeats),
            "xla_w": _ms(lambda: nn(x, wt), repeats),
            "torch": _ms(lambda: torch.nn.functional.linear(xt, wtt), repeats),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict) -> str:
    """The three tables as markdown."""
    env = result["environment"]
    lines = [
        "# CPU primitives: XLA vs torch",
        "",
        f"JAX {env['jax']} (default settings, XLA_FLAGS={env['xla_flags']!r}), torch "
        f"{env['torch']} on {env['torch_threads']} threads, {env['cpus']} CPUs; ms, median of "
        f"{result['repeats']} calls. Generated by `python benchmarks/bench_primitives.py`.",
        "",
        "## 3x3 convolutions (stride 1, padding 1): value / input gradient",
        "",
        "| N, Cin->Cout, map | xla | slices | winograd | winograd, G g G^T given | pick | "
        "torch | best JAX form's time / torch's (value, gradient) | winograd max rel. diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["conv"]:
        n, c, o, h = r["shape"]
        forms = ("xla", "slices", "winograd")  # the forms a model can run
        best_v = min(r[f][0] for f in forms)
        best_g = min(r[f][1] for f in forms)
        shown = (*forms, "winograd, G g G^T given", "pick")
        cells = " | ".join(f"{r[f][0]:.2f} / {r[f][1]:.2f}" for f in shown)
        lines.append(
            f"| {n}, {c}->{o}, {h}x{h} | {cells} | {r['torch'][0]:.2f} / {r['torch'][1]:.2f} "
            f"| {best_v / r['torch'][0]:.2f}x, {best_g / r['torch'][1]:.2f}x "
            f"| {r['winograd'][2]:.1e} |"
        )
    lines += [
        "",
        "## XLA's CPU library paths (per-program compile options)",
        "",
        "| case | option | ms | max rel. diff vs default | compiled program |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in result["options"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['option']} | not accepted: {r['error']} | | |")
        else:
            lines.append(
                f"| {r['case']} | {r['option']} | {r['ms']:.2f} | {r['max_rel_diff']:.1e} | "
                f"{'the default' if r['same_program'] else 'changed'} |"
            )
    lines += [
        "",
        "## Dense products (rows x in -> out)",
        "",
        "| shape | XLA x @ w.T | XLA x @ w | torch linear | torch / best XLA |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["dot"]:
        m, k, n = r["shape"]
        best = min(r["xla_w_T"], r["xla_w"])
        lines.append(
            f"| {m} x {k} -> {n} | {r['xla_w_T']:.2f} | {r['xla_w']:.2f} | {r['torch']:.2f} "
            f"| {r['torch'] / best:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="two shapes of each table")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/primitives.json")
    args = parser.parse_args(argv)
    convs = CONV_SHAPES[:2] if args.quick else CONV_SHAPES
    dots = DOT_SHAPES[:2] if args.quick else DOT_SHAPES
    result = {
        "repeats": args.repeats,
        "conv": conv_table(convs, args.repeats),
        "options": options_table(args.repeats),
        "dot": dot_table(dots, args.repeats),
        "environment": harness.environment(),
    }
    harness.write_results(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
