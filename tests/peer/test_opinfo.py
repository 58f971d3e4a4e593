"""PyTorch's OpInfo samples through the bridge: a peer suite nobody here wrote.

Generated at test time from ``torch.testing._internal.common_methods_invocations.op_db``
(needs ``expecttest`` and ``hypothesis``): every OpInfo that supports float32 on CPU, up to
``SAMPLES`` sample inputs each. Each sample becomes a small ``nn.Module`` (its tensors are
the forward's inputs, everything else is closed over), is converted with
``jaxattr.bridge.from_torch`` (its default, dynamic batch) and run jitted; outputs and input
gradients (a random cotangent through ``jax.vjp`` against ``torch.autograd.grad``) are
compared with eager torch.

Every sample gets one of four outcomes (or ``skip`` when eager torch itself cannot run it on
this machine, e.g. CUDA-only jiterator ops):

- ``pass``: outputs and input gradients agree (tolerance below);
- ``unsupported``: a named bridge error (:class:`jaxattr.bridge.BridgeError`:
  ``UnsupportedOpsError``, ``ExportError``, ``TrainModeError``): expected, the bridge says
  what it cannot do;
- ``wrong``: it runs and gives other numbers than torch (or other shapes, NaN where torch is
  finite, a missing output): a silent wrong answer, the worst outcome;
- ``crash``: any other exception (an unnamed error, at conversion or at run time).

A test is one OpInfo; it fails when a sample is ``wrong`` or ``crash`` and is not listed in
``KNOWN`` below (each entry says why). A listed case that now passes is fine (the entry can
go). Run the whole suite (9 minutes on 2 free cores, over an hour on busy ones) with::

    python -m pytest -m peer tests/peer/test_opinfo.py -q -p no:cacheprovider

The counts are printed at the end (and written as JSON to ``$JAXATTR_OPINFO_REPORT`` when
set); docs/bridge.md records them.
"""

from __future__ import annotations

import functools
import json
import os
import traceback
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.peer

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")
pytest.importorskip("hypothesis")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

from jaxattr import bridge  # noqa: E402

#: Samples per OpInfo (the first ones ``sample_inputs`` yields, with a fixed seed);
#: ``JAXATTR_OPINFO_SAMPLES=1`` gives a quicker pass.
SAMPLES = int(os.environ.get("JAXATTR_OPINFO_SAMPLES", "3"))

#: Tolerance: an element passes when ``|jax - torch| <= RTOL * |torch| + ATOL * scale`` with
#: ``scale = max(1, max|torch|)`` over the compared tensor; NaN and inf must sit where torch
#: has them; integer and bool outputs must be equal.
RTOL = 1e-4
ATOL = 1e-5

#: Known wrong or crashing samples: ``"opinfo name[.variant]": {sample index: reason}``, or
#: ``{"*": reason}`` for every sample of the OpInfo. The outcome of a listed sample is
#: recorded, never a failure. Reasons say who has to fix it.
KNOWN: dict[str, dict[object, str]] = {
    # rounding, not a lowering: a saturated softmax whose two tied weights cancel exactly in
    # the query gradient (torch: 0; JAX eager: 0; XLA's fused softmax gradient under jit:
    # 1e-3 of noise on logits of size ~100); the float64 lowering gives 1e-52, as torch
    "nn.functional.multi_head_attention_forward": {2: "jit rounding of a cancelling sum"},
}

#: OpInfos whose samples draw random numbers: only shapes and dtypes are compared.
RANDOM = {
    "bernoulli",
    "normal",
    "normal.number_mean",
    "rand_like",
    "randn_like",
    "randint_like",
    "randint",
    "multinomial",
    "uniform",
    "cauchy",
    "exponential",
    "geometric",
    "log_normal",
    "nn.functional.dropout",
    "nn.functional.dropout2d",
    "nn.functional.dropout3d",
    "nn.functional.alpha_dropout",
    "nn.functional.feature_alpha_dropout.with_train",
    "nn.functional.feature_alpha_dropout.without_train",
    "nn.functional.rrelu",
    "empty",
    "empty_like",
    "new_empty",
    "empty_strided",
    "new_empty_strided",
    "empty_permuted",
    "nn.functional.fractional_max_pool2d",
    "nn.functional.fractional_max_pool3d",
    "torch.empty",
}


def _opinfo_id(op) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


@functools.cache
def _op_db() -> dict[str, object]:
    """The OpInfos with float32 CPU support, by id (built once per process)."""
    from torch.testing._internal.common_methods_invocations import op_db

    out = {}
    for op in op_db:
        try:
            ok = torch.float32 in op.supported_dtypes("cpu")
        except Exception:  # noqa: BLE001 - an OpInfo that cannot say: left out
            ok = False
        if ok:
            out[_opinfo_id(op)] = op
    return out


def _ids() -> list[str]:
    try:
        return sorted(_op_db())
    except Exception as e:  # noqa: BLE001 - collection must not die on torch internals
        warnings.warn(f"op_db could not be built: {e}", stacklevel=1)
        return []


# --------------------------------------------------------------------------- one sample
class _OpModule(nn.Module):
    """``fn(input, *args, **kwargs)`` with the sample's tensors as forward inputs (named
    ``x0, x1, ...``: the bridge reads the forward's signature for the batch dimension)."""

    def __init__(self, fn, spec, leaves, slots):
        super().__init__()
        self._fn, self._spec, self._leaves, self._slots = fn, spec, leaves, slots

    def _call(self, tensors):
        leaves = list(self._leaves)
        for slot, t in zip(self._slots, tensors, strict=True):
            leaves[slot] = t
        inp, args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        return self._fn(inp, *args, **kwargs)


@functools.cache
def _module_class(n: int) -> type:
    names = ", ".join(f"x{i}" for i in range(n))
    ns: dict = {}
    exec(f"def forward(self, {names}):\n    return self._call(({names}{',' if n else ''}))", ns)
    return type(f"OpModule{n}", (_OpModule,), {"forward": ns["forward"]})


class _Outcome(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _to_jax(t):
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.detach().float().numpy()).astype(jnp.bfloat16)
    a = t.detach().numpy()
    if a.dtype == np.int64:
        a = a.astype(np.int32)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    return jnp.asarray(a)


def _compare(got, want, what: str) -> None:
    got = np.asarray(got)
    if isinstance(want, torch.Tensor):
        want = want.detach()
        want = (want.float() if want.dtype in (torch.bfloat16, torch.float16) else want).numpy()
    else:
        want = np.asarray(want)
    if got.shape != want.shape:
        raise _Outcome("wrong", f"{what}: shape {got.shape}, torch {want.shape}")
    if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
        if not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
            bad = int((got.astype(np.int64) != want.astype(np.int64)).sum())
            raise _Outcome("wrong", f"{what}: {bad}/{want.size} integer entries differ")
        return
    if np.iscomplexobj(want):
        raise _Outcome("wrong", f"{what}: torch gives complex {want.dtype}")
    got, want = got.astype(np.float64), want.astype(np.float64)
    fin = np.isfinite(want)
    same_nonfinite = (got[~fin] == want[~fin]) | (np.isnan(got[~fin]) & np.isnan(want[~fin]))
    if not same_nonfinite.all():
        raise _Outcome(
            "wrong", f"{what}: {int((~same_nonfinite).sum())} NaN/inf entries of torch differ"
        )
    if not np.isfinite(got[fin]).all():
        raise _Outcome(
            "wrong", f"{what}: {int((~np.isfinite(got[fin])).sum())} NaN/inf where torch is finite"
        )
    g, w = got[fin], want[fin]
    if not w.size:
        return
    scale = max(1.0, float(np.abs(w).max()))
    err = np.abs(g - w)
    bad = err > RTOL * np.abs(w) + ATOL * scale
    if bad.any():
        raise _Outcome(
            "wrong",
            f"{what}: {int(bad.sum())}/{w.size} entries off, max abs err "
            f"{err.max():.3g} (max |torch| {scale:.3g})",
        )


def _no_worse(got, torch32, torch64) -> bool:
    """Whether ``got`` is at most twice as far from float64 torch as float32 torch is (for
    ill-conditioned samples, where float32 rounding alone exceeds the tolerance), with
    NaN and inf where float64 torch has them."""
    if not isinstance(torch32, torch.Tensor) or not torch32.is_floating_point():
        return False
    got = np.asarray(got, np.float64)
    t32 = torch32.detach().double().numpy()
    t64 = torch64.detach().double().numpy()
    if got.shape != t64.shape:
        return False
    fin = np.isfinite(t64)
    if not (np.isfinite(got) == fin).all() or not np.array_equal(
        got[~fin], t64[~fin], equal_nan=True
    ):
        return False
    if not fin.any():
        return True
    return np.abs(got - t64)[fin].max() <= 2 * np.abs(t32 - t64)[fin].max()


def _leaves(out):
    """Tensors and numbers of an output (``torch.Size`` entries, ``.item()`` results)."""
    return [x for x in pytree.tree_leaves(out) if isinstance(x, (torch.Tensor, int, float))]


def run_sample(op, sample, random: bool = False) -> tuple[str, str]:
    """Convert and compare one sample; returns ``(outcome, detail)``."""
    inp, args, kwargs = sample.input, sample.args, sample.kwargs
    leaves, spec = pytree.tree_flatten((inp, tuple(args), dict(kwargs)))
    slots = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    tensors = [leaves[i].detach().clone() for i in slots]
    consts = [None if isinstance(x, torch.Tensor) else x for x in leaves]
    model = _module_class(len(tensors))(op.op, spec, consts, slots).eval()

    # ---- torch: outputs, and input gradients for a random cotangent
    grad_in = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    # gradients for every float tensor, else (some arguments, e.g. running statistics,
    # must not require one) for the first, else none
    tout = None
    for wants in (grad_in, grad_in[:1], []):
        tin = [
            t.clone().requires_grad_(i in wants and op.supports_autograd)
            for i, t in enumerate(tensors)
        ]
        try:
            tout = model(*tin)
            break
        except Exception as e:  # noqa: BLE001 - the sample itself is broken on this torch
            failure = f"eager torch failed: {type(e).__name__}: {str(e)[:200]}"
    if tout is None:
        return "skip", failure
    touts = _leaves(tout)
    rng = np.random.default_rng(0)
    cots = [rng.standard_normal(np.shape(t)).astype(np.float32) for t in touts]
    diff = [
        i
        for i, t in enumerate(touts)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad
    ]
    want_grads = None
    wrt = [i for i in grad_in if tin[i].requires_grad]
    if diff and wrt and not random:
        try:
            gs = torch.autograd.grad(
                [touts[i] for i in diff],
                [tin[i] for i in wrt],
                [torch.from_numpy(cots[i]) for i in diff],
                allow_unused=True,
            )
            want_grads = [
                torch.zeros_like(tin[i]) if g is None or g._is_zerotensor() else g
                for i, g in zip(wrt, gs, strict=True)
            ]
        except Exception:  # noqa: BLE001 - torch has no gradient here: outputs only
            want_grads = None

    exact: list = []

    def double():
        """torch's outputs and gradients in float64 (computed once, on a mismatch), or
        None: torch's float32 can be the less accurate side (e.g. logcumsumexp's gradient
        next to an entry of 1e4), so a result that matches float64 torch passes."""
        if not exact:
            try:
                t64 = [
                    t.double().requires_grad_(i in wrt) if t.dtype == torch.float32 else t.clone()
                    for i, t in enumerate(tensors)
                ]
                o64 = _leaves(model(*t64))
                g64 = None
                if want_grads is not None:
                    gs = torch.autograd.grad(
                        [o64[i] for i in diff],
                        [t64[i] for i in wrt],
                        [torch.from_numpy(cots[i]).double() for i in diff],
                        allow_unused=True,
                    )
                    g64 = [
                        torch.zeros_like(t64[i]) if g is None or g._is_zerotensor() else g
                        for i, g in zip(wrt, gs, strict=True)
                    ]
                exact.append((o64, g64))
            except Exception:  # noqa: BLE001 - no float64 reference: float32 decides
                exact.append(None)
        return exact[0]

    def compare(got, k, what, grad=False):
        try:
            _compare(got, (want_grads if grad else touts)[k], what)
        except _Outcome as first:
            ref = double()
            if ref is None or (grad and ref[1] is None) or len(ref[0]) != len(touts):
                raise
            want = (want_grads if grad else touts)[k]
            exact64 = (ref[1] if grad else ref[0])[k]
            try:
                _compare(got, exact64, what)
            except _Outcome:
                if not _no_worse(got, want, exact64):
                    raise first from None

    # ---- bridge
    stage = "conversion"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conv = bridge.from_torch(model, tuple(tensors))
        stage = "run"
        jin = [_to_jax(t) for t in tensors]

        def fwd(params, *xs):
            return [jnp.asarray(o) for o in jax.tree.leaves(conv.fn(params, *xs))]

        grad_error = got_grads = None
        if want_grads is None:
            jleaves = jax.jit(fwd)(conv.params, *jin)
        else:

            def both(params, *xs):
                def f(*ws):
                    full = list(xs)
                    for i, w in zip(wrt, ws, strict=True):
                        full[i] = w
                    return fwd(params, *full)

                outs, vjp = jax.vjp(f, *[xs[i] for i in wrt])
                ct = [
                    (jnp.asarray(cots[i], o.dtype) if i in diff else jnp.zeros_like(o))
                    if jnp.issubdtype(o.dtype, jnp.inexact)
                    else np.zeros(o.shape, jax.dtypes.float0)
                    for i, o in enumerate(outs)
                ]
                return outs, vjp(ct)

            try:
                jleaves, got_grads = jax.jit(both)(conv.params, *jin)
            except Exception as e:  # noqa: BLE001 - the outputs are still compared first
                grad_error = e
                jleaves = jax.jit(fwd)(conv.params, *jin)
        if len(jleaves) != len(touts):
            raise _Outcome("wrong", f"{len(jleaves)} outputs, torch {len(touts)}")
        for k, (a, b) in enumerate(zip(jleaves, touts, strict=True)):
            if random:
                if tuple(np.shape(a)) != tuple(np.shape(b)):
                    raise _Outcome("wrong", f"output {k}: shape {a.shape}, torch {b.shape}")
                continue
            compare(a, k, f"output {k}")
        if want_grads is not None:
            stage = "gradient"
            if grad_error is not None:
                raise grad_error
            for k, a in enumerate(got_grads):
                compare(a, k, f"gradient of input {wrt[k]}", grad=True)
    except _Outcome as o:
        return o.kind, o.detail
    except bridge.BridgeError as e:
        what = (
            sorted(e.ops)
            if isinstance(e, bridge.UnsupportedOpsError)
            else str(e).splitlines()[0][:200]
        )
        return "unsupported", f"{type(e).__name__} at {stage}: {what}"
    except Exception as e:  # noqa: BLE001 - classified, not hidden
        tb = traceback.extract_tb(e.__traceback__)
        where = next(
            (
                f"{os.path.basename(fr.filename)}:{fr.lineno}"
                for fr in reversed(tb)
                if "/bridge/" in fr.filename or "jaxattr" in fr.filename
            ),
            "",
        )
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return "crash", f"{type(e).__name__} at {stage} ({where}): {msg}"
    return "pass", ""


def samples_of(op) -> list:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = []
        for s in op.sample_inputs("cpu", torch.float32, requires_grad=False):
            out.append(s)
            if len(out) == SAMPLES:
                break
    return out


# --------------------------------------------------------------------------- pytest
_RESULTS: dict[str, list[tuple[str, str]]] = {}


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    """Counts at the end; while the module runs, torch's list of composite ops is built
    once instead of twice per conversion (``run_decompositions`` walks every registered op,
    about a second each time; nothing here registers ops)."""
    import torch.export.decomp_utils as du
    import torch.export.exported_program as epm

    original = epm._collect_all_valid_cia_ops
    cached = functools.cache(original)
    epm._collect_all_valid_cia_ops = du._collect_all_valid_cia_ops = cached
    try:
        yield
    finally:
        epm._collect_all_valid_cia_ops = du._collect_all_valid_cia_ops = original
    if not _RESULTS:
        return
    counts: dict[str, int] = {}
    for res in _RESULTS.values():
        for kind, _ in res:
            counts[kind] = counts.get(kind, 0) + 1
    line = (
        f"OpInfo peer suite: {len(_RESULTS)} OpInfos, "
        f"{sum(counts.values())} samples: "
        + ", ".join(
            f"{counts.get(k, 0)} {k}" for k in ("pass", "unsupported", "wrong", "crash", "skip")
        )
    )
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        tr.write_line(line)
    path = os.environ.get("JAXATTR_OPINFO_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"counts": counts, "results": _RESULTS}, f, indent=1, sort_keys=True)


@pytest.mark.filterwarnings("ignore")
def pytest_generate_tests(metafunc):
    """One test per OpInfo; op_db (about 10 s to build) only when ``-m`` selects ``peer``,
    so the default run (``-m 'not peer'``) does not pay for it."""
    if "opinfo" in metafunc.fixturenames:
        expr = metafunc.config.getoption("markexpr", "") or ""
        wanted = "peer" in expr.replace("not peer", "")
        metafunc.parametrize("opinfo", _ids() if wanted else [])


def test_opinfo(opinfo):
    op = _op_db()[opinfo]
    try:
        samples = samples_of(op)
    except Exception as e:  # noqa: BLE001 - torch's own sample generator failed
        pytest.skip(f"sample_inputs failed: {type(e).__name__}: {e}")
    known = KNOWN.get(opinfo, {})
    results, bad = [], []
    for i, s in enumerate(samples):
        kind, detail = run_sample(op, s, random=opinfo in RANDOM)
        results.append((kind, detail))
        if kind in ("wrong", "crash") and i not in known and "*" not in known:
            bad.append(f"sample {i}: {kind}: {detail}")
    _RESULTS[opinfo] = results
    jax.clear_caches() if len(_RESULTS) % 50 == 0 else None
    assert not bad, f"{opinfo}: " + "; ".join(bad)
