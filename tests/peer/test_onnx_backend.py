"""Peer suite: the ONNX backend node test cases, generated at test time by the installed
``onnx`` package (``onnx.backend.test.case.node.collect_testcases``; nothing vendored).

Each case is a one-node model (or its function-expanded form, ``*_expanded``) with inputs and
the reference outputs computed by ONNX's own reference code. Each is converted with
:func:`jaxattr.bridge.from_onnx`, run with ``conv(*inputs)`` (jit-compiled; shape-like graph
inputs are taken as concrete values) and classified:

* ``pass``: every output matches (shape, dtype kind, values within the case's ``rtol`` and
  ``atol``; float32 against ONNX's float64 references gets ``atol >= 1e-6 max|ref|``, and
  bfloat16 ``rtol >= 2**-6`` as in ONNX's own backend runner);
* ``clean``: a named bridge error (:class:`jaxattr.bridge.BridgeError`: an
  ``UnsupportedOpsError`` listing the operator, ...);
* ``wrong``: the model ran and gave other numbers, shapes or dtypes (a silent wrong answer);
* ``crash``: any other exception.

A case passes the test when it is ``pass``, or when it is listed in :data:`KNOWN_UNSUPPORTED`
(below, with the reason) and ends in a ``clean`` error. A listed case that passes fails too,
so the list never goes stale.

Run: ``python -m pytest -m peer tests/peer/test_onnx_backend.py -q -p no:cacheprovider``.
Counts: ``python tests/peer/test_onnx_backend.py`` prints pass/clean/wrong/crash and every
case that is not ``pass`` (``-v`` for the messages); docs/onnx.md records them.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from jaxattr import bridge  # noqa: E402

pytestmark = pytest.mark.peer

# --------------------------------------------------------------------------- known unsupported
#: Case-name patterns (fnmatch) that end in a clean, named error, by reason. Everything
#: else must pass.
KNOWN_UNSUPPORTED: dict[str, str] = {}


def _known(reason: str, *patterns: str) -> None:
    for p in patterns:
        KNOWN_UNSUPPORTED[p] = reason


# Control flow: subgraph operators (If, Loop, Scan) are not lowered; the function-expanded
# forms of Range, SequenceMap, LinearAttention and AffineGrid are built from them.
_known(
    "control flow (If/Loop/Scan)",
    "test_if",
    "test_if_opt",
    "test_if_seq",
    "test_loop11",
    "test_loop13_seq",
    "test_loop16_seq_none",
    "test_scan_sum",
    "test_scan9_*",
    "test_range_*_expanded",
    "test_sequence_map_*_expanded",
    "test_linear_attention_*_expanded",
    "test_affine_grid_*_expanded",
)
# Sequences, maps and optionals have no JAX array equivalent.
_known(
    "sequence/optional types",
    "test_sequence_insert_*",
    "test_sequence_map_*",
    "test_split_to_sequence_*",
    "test_optional_get_element_*",
    "test_optional_has_element_*",
)
# Strings (JAX has no string arrays) and operators on text or encoded images.
_known(
    "strings, text and image decoding",
    "test_equal_string",
    "test_equal_string_broadcast",
    "test_string_concat*",
    "test_string_split_*",
    "test_strnormalizer_*",
    "test_regex_full_match_*",
    "test_tfidfvectorizer_*",
    "test_image_decoder_*",
)
# Output shape depends on the data: no fixed-shape lowering.
_known(
    "data-dependent output shape",
    "test_nonzero_example",
    "test_unique_*",
    "test_compress_*",
    "test_nonmaxsuppression_*",
)
# Random operators (and Dropout in training mode with a nonzero ratio, which draws).
_known(
    "random",
    "test_bernoulli*",
    "test_training_dropout",
    "test_training_dropout_default",
    "test_training_dropout_default_mask",
    "test_training_dropout_mask",
)
# Quantized operators and types whose rounding/overflow JAX (ml_dtypes) does not follow:
# 4- and 2-bit integers, FLOAT4E2M1, FLOAT8E8M0, non-saturating float8 casts; BitCast.
_known(
    "quantization and narrow types",
    "test_quantizelinear*",
    "test_dequantizelinear*",
    "test_dynamicquantizelinear*",
    "test_qlinearconv",
    "test_qlinearmatmul_*",
    "test_convinteger_*",
    "test_matmulinteger",
    "test_cast_*_to_INT4",
    "test_cast_*_to_UINT4",
    "test_cast_*_to_INT2",
    "test_cast_*_to_UINT2",
    "test_cast_*_to_FLOAT4E2M1",
    "test_cast_e8m0_*_to_FLOAT8E8M0",
    "test_cast_no_saturate_*",
    "test_castlike_*_to_INT4*",
    "test_castlike_*_to_UINT4*",
    "test_castlike_*_to_INT2*",
    "test_castlike_*_to_UINT2*",
    "test_castlike_*_to_FLOAT4E2M1*",
    "test_castlike_no_saturate_*",
    "test_bitcast_*",
)
# Training: BatchNormalization with training_mode=1 (batch statistics and running-stat
# updates) and the ai.onnx.preview.training optimizers.
_known(
    "training",
    "test_batchnorm_*_training_mode",
    "test_adagrad*",
    "test_adam*",
    "test_momentum*",
    "test_nesterov_momentum",
)
# Other domains: ai.onnx.ml (classic ML) and ai.onnx.preview (FlexAttention).
_known("non-default domain", "test_ai_onnx_ml_*", "test_flexattention*")
# Signal processing: complex-valued FFTs.
_known("signal processing (DFT/STFT)", "test_dft*", "test_stft*", "test_melweightmatrix")
# Not lowered yet; each could be (fixed shapes): listed so that a lowering that lands
# removes its line.
_known(
    "not lowered yet",
    "test_gridsample*",
    "test_affine_grid_2d",
    "test_affine_grid_2d_align_corners",
    "test_affine_grid_3d",
    "test_affine_grid_3d_align_corners",
    "test_roialign_*",
    "test_basic_deform_conv_*",
    "test_deform_conv_*",
    "test_col2im*",
    "test_center_crop_pad_*",
    "test_maxunpool_*",
    "test_maxpool_with_argmax_*",
    "test_reversesequence_*",
    "test_tensorscatter*",
    "test_linear_attention_*",
    "test_causal_conv_with_state_*",
)


# --------------------------------------------------------------------------- the cases
@functools.cache
def _cases() -> dict[str, object]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases()}


def _names() -> list[str]:
    try:
        return sorted(_cases())
    except Exception:  # noqa: BLE001 - no generator in this onnx: nothing to run
        return []


def _array(v):
    from onnx import numpy_helper

    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    return v


def _close(got, want, rtol, atol) -> str | None:
    """Why ``got`` differs from ``want`` (None when they agree)."""
    want = np.asarray(_array(want))
    try:
        got = np.asarray(got)
    except Exception as e:  # noqa: BLE001
        return f"output is not an array ({type(got).__name__}: {e})"
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    kinds = {
        "f": "float",
        "c": "complex",
        "i": "int",
        "u": "int",
        "b": "bool",
        "V": "float",
    }  # "V": ml_dtypes (bfloat16, float8) read back as void
    if kinds.get(got.dtype.kind, got.dtype.kind) != kinds.get(want.dtype.kind, want.dtype.kind):
        return f"dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind in "biu" or want.dtype == object:
        if want.dtype == object:
            ok = np.array_equal(got.astype(str), want.astype(str))
        else:
            ok = np.array_equal(got.astype(np.int64), want.astype(np.int64))
        return None if ok else f"values differ at {int((got != want).sum())} elements"
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2**-6)  # two bfloat16 ULPs, as ONNX's own backend runner allows
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    fin = np.isfinite(w)
    scale = float(np.abs(w[fin]).max()) if fin.any() else 0.0
    atol = max(atol, 1e-6 * scale)
    with np.errstate(invalid="ignore", over="ignore"):
        same = (np.isnan(g) & np.isnan(w)) | (g == w)
        bad = ~same & ~(np.abs(g - w) <= atol + rtol * np.abs(w))
    if bad.any():
        i = np.flatnonzero(bad)[0]
        return (
            f"{int(bad.sum())}/{bad.size} elements differ (first: {g.flat[i]!r} vs "
            f"{w.flat[i]!r}; rtol {rtol}, atol {atol:.3g})"
        )
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return " ".join(ln.strip() for ln in text.splitlines()[:2])[:300] if text else ""


def classify(case) -> tuple[str, str]:
    """``(status, message)``: status one of pass, clean, wrong, crash."""
    inputs, outputs = case.data_sets[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conv = bridge.from_onnx(case.model)
            got = conv(*[_array(x) for x in inputs])
    except bridge.BridgeError as e:
        return "clean", f"{type(e).__name__}: {_first_line(e)}"
    except Exception as e:  # noqa: BLE001 - classified
        return "crash", f"{type(e).__name__}: {_first_line(e)}"
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    if len(got) != len(outputs):
        return "wrong", f"{len(got)} outputs, expected {len(outputs)}"
    for k, (a, b) in enumerate(zip(got, outputs, strict=True)):
        why = _close(a, b, case.rtol, case.atol)
        if why:
            return "wrong", f"output {k}: {why}"
    return "pass", ""


#: Function-expanded forms of listed operators that run: they are built from primitive ops
#: the bridge lowers (they pass since the lowerings align ranks and dtypes explicitly).
EXPANDED_SUPPORTED = (
    "test_flexattention*_expanded_ver26",
    "test_center_crop_pad_*_expanded",
    "test_causal_conv_with_state_*_expanded",
)


def known_reason(name: str) -> str | None:
    if any(fnmatch.fnmatchcase(name, pat) for pat in EXPANDED_SUPPORTED):
        return None
    for pat, reason in KNOWN_UNSUPPORTED.items():
        if fnmatch.fnmatchcase(name, pat):
            return reason
    return None


@pytest.mark.parametrize("name", _names())
def test_onnx_backend_node_case(name):
    status, msg = classify(_cases()[name])
    reason = known_reason(name)
    if reason is not None:
        assert status == "clean", f"{name} is listed as unsupported ({reason}) but is {status}" + (
            f": {msg}" if msg else "; remove it from KNOWN_UNSUPPORTED"
        )
    else:
        assert status == "pass", f"{name}: {status}: {msg}"


def test_the_generator_yields_cases():
    assert len(_names()) > 1000, "onnx.backend.test.case produced no node cases"


def main(argv: list[str]) -> None:
    """Print the counts (and the cases that do not pass) of the whole suite."""
    import collections

    verbose = "-v" in argv
    pats = [a for a in argv if not a.startswith("-")]
    counts: collections.Counter[str] = collections.Counter()
    unexpected = 0
    for name in _names():
        if pats and not any(fnmatch.fnmatchcase(name, p) for p in pats):
            continue
        status, msg = classify(_cases()[name])
        counts[status] += 1
        reason = known_reason(name)
        ok = status == "pass" or (status == "clean" and reason is not None)
        unexpected += not ok
        if status != "pass" and (verbose or not ok):
            print(f"{status:5s} {'' if ok else 'UNEXPECTED '}{name}: {msg}", flush=True)
    total = sum(counts.values())
    print(
        f"{total} cases: {counts['pass']} pass, {counts['clean']} clean unsupported, "
        f"{counts['wrong']} wrong, {counts['crash']} crash; {unexpected} unexpected"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
