"""A fast slice of the peer suites in the default run: every 50th PyTorch OpInfo (its first
sample) and every 40th ONNX backend node case, through the same harness and the same
``KNOWN`` lists as the full suites (``python -m pytest -m peer tests/peer``). A new silent
wrong answer or crash in a sliced op fails the default run, not only the opt-in one."""

from __future__ import annotations

import pytest

from tests.peer import test_onnx_backend as onnx_suite
from tests.peer import test_opinfo as opinfo_suite

OPINFO_STRIDE = 50
ONNX_STRIDE = 40


def _opinfo_slice() -> list[str]:
    return opinfo_suite._ids()[::OPINFO_STRIDE]


def test_an_opinfo_slice_has_no_wrong_or_crashing_sample():
    ids = _opinfo_slice()
    assert len(ids) > 10, "op_db yielded too few OpInfos"
    bad, kinds = [], {}
    for name in ids:
        op = opinfo_suite._op_db()[name]
        try:
            samples = opinfo_suite.samples_of(op)[:1]
        except Exception:  # noqa: BLE001 - torch's own sample generator failed (as peer)
            continue
        known = opinfo_suite.KNOWN.get(name, {})
        for i, s in enumerate(samples):
            kind, detail = opinfo_suite.run_sample(op, s, random=name in opinfo_suite.RANDOM)
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind in ("wrong", "crash") and i not in known and "*" not in known:
                bad.append(f"{name} sample {i}: {kind}: {detail}")
    assert not bad, "; ".join(bad)
    assert kinds.get("pass", 0) >= len(ids) // 2, kinds


@pytest.mark.parametrize("name", onnx_suite._names()[::ONNX_STRIDE])
def test_an_onnx_backend_slice(name):
    onnx_suite.test_onnx_backend_node_case(name)
