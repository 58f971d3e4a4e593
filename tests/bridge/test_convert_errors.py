"""Conversion-time outcomes the OpInfo peer suite found crashing: each is now a result or a
named error before anything runs (tests/peer/test_opinfo.py has the full sweep)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from jaxattr import bridge


class Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *xs):
        return self.f(*xs)


def test_linalg_with_error_checks_converts_through_the_effect_token():
    # torch.export writes linalg_inv_ex's error check with an effect token input
    a = torch.randn(2, 3, 3) + 3 * torch.eye(3)
    conv = bridge.from_torch(Fn(torch.linalg.inv), a)
    np.testing.assert_allclose(
        np.asarray(conv(a)), torch.linalg.inv(a).numpy(), rtol=1e-4, atol=1e-5
    )


def test_complex_casts_are_refused_at_conversion():
    with pytest.raises(bridge.UnsupportedOpsError, match="complex dtype"):
        bridge.from_torch(Fn(lambda x: torch.view_as_real(x.to(torch.cfloat))), torch.randn(2, 3))


def test_a_failing_decomposition_is_an_export_error(monkeypatch):
    ep = torch.export.export(Fn(torch.sin), (torch.randn(2, 3),))

    def broken(*args, **kwargs):
        raise RuntimeError("internal assert in a decomposition")

    monkeypatch.setattr(type(ep), "run_decompositions", broken)
    with pytest.raises(bridge.ExportError, match="run_decompositions raised RuntimeError"):
        bridge.from_exported(ep)


@pytest.mark.parametrize(
    "module", [Fn(torch.block_diag), Fn(lambda a, b, c: torch.block_diag(a, b, c))]
)
def test_block_diag_operands_of_batch_one_convert(module):
    # the OpInfo samples that crashed: operands leading with 1 (duplicated for export) and
    # operands of several leading sizes, one of them 1 (then no batch is guessed)
    for xs in [
        (torch.randn(1, 5), torch.randn(1, 6), torch.randn(1, 5)),
        (torch.randn(1, 5), torch.randn(2, 5), torch.randn(1, 5)),
    ]:
        conv = bridge.from_torch(module, xs)
        np.testing.assert_allclose(np.asarray(conv(*xs)), torch.block_diag(*xs).numpy())


def test_an_export_that_does_not_fit_its_example_falls_back_to_fixed_shapes(monkeypatch):
    from jaxattr.bridge import convert

    conv = bridge.from_torch(Fn(lambda a: a @ torch.ones(3, 2)), torch.randn(2, 3))
    assert convert._runs_on(conv, (torch.randn(1, 3),), {})
    assert not convert._runs_on(conv, (torch.randn(1, 4),), {})  # the graph's own check
    monkeypatch.setattr(convert, "_runs_on", lambda *a: False)
    x = torch.randn(1, 3)
    with pytest.warns(UserWarning, match="do not behave as one batch"):
        conv = bridge.from_torch(Fn(lambda a: a @ torch.ones(3, 2)), x)
    assert conv._inputs[0].shape == (1, 3)  # fixed shapes
    np.testing.assert_allclose(np.asarray(conv(x)), (x @ torch.ones(3, 2)).numpy(), rtol=1e-6)


def test_star_args_forward_keeps_a_dynamic_batch():
    conv = bridge.from_torch(Fn(lambda a, b: a + b), (torch.randn(2, 3), torch.randn(2, 3)))
    out = conv(np.ones((5, 3), np.float32), np.ones((5, 3), np.float32))
    assert out.shape == (5, 3)


def test_inputs_sharing_the_batch_must_agree_on_its_size():
    conv = bridge.from_torch(Fn(lambda a, b: a * b), (torch.randn(2, 3), torch.randn(2, 3)))
    assert conv(np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)).shape == (4, 3)
    with pytest.raises(ValueError, match="same dynamic dimension"):
        conv(np.ones((4, 3), np.float32), np.ones((3, 3), np.float32))
