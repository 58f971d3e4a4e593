"""from_torch(..., output=...): explain one part of a structured model output."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import jaxattr
from jaxattr import bridge


class _Structured(torch.nn.Module):
    """Returns a dict holding an array and a tuple, like a ModelOutput with hidden states."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.head(h), "hidden": (h, h * 2)}


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return _Structured().eval()


@pytest.mark.parametrize(
    "output, pick",
    [
        ("logits", lambda o: o["logits"]),
        (("hidden", 1), lambda o: o["hidden"][1]),
        (("hidden", -2), lambda o: o["hidden"][0]),
        ("hidden", lambda o: o["hidden"]),
    ],
)
def test_output_selects_the_same_part_as_torch(torch_model, output, pick):
    x = torch.randn(5, 4)
    conv = bridge.from_torch(torch_model, x, output=output)
    got = conv(x.numpy())
    want = pick(torch_model(x))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), w.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert {"body", "head"} <= set(conv.layers)  # the module's own names
    # the selection is part of the static graph: it survives the pytree round trip (jit)
    leaves, tree = jax.tree.flatten(conv)
    again = jax.tree.unflatten(tree, leaves)
    assert again.output == output
    np.testing.assert_allclose(
        jax.tree.leaves(jax.jit(lambda m, v: m.fn(m.params, v))(again, x.numpy()))[0],
        jax.tree.leaves(got)[0],
        rtol=1e-6,
    )


def test_structured_methods_work_on_the_selected_output(torch_model):
    x = torch.randn(3, 4)
    conv = bridge.from_torch(torch_model, x, output="logits")
    ours = jaxattr.lrp(conv, x.numpy(), target=1, composite=jaxattr.epsilon_plus())
    assert ours.shape == (3, 4)
    sal = jaxattr.saliency(conv, x.numpy(), target=1, abs=False)
    xt = x.clone().requires_grad_(True)
    torch_model(xt)["logits"][:, 1].sum().backward()
    np.testing.assert_allclose(np.asarray(sal), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "output, message",
    [
        ("logit", r"the output is a dict with keys \['logits', 'hidden'\], got 'logit'"),
        (("hidden", 2), r"output\['hidden'\] is a tuple of 2, expected an index in \[-2, 2\)"),
        (("logits", 0), r"output\['logits'\] is one tensor; nothing to select with 0"),
        (("hidden", True), r"expected an index"),
    ],
)
def test_a_wrong_output_is_named_at_conversion(torch_model, output, message):
    with pytest.raises(KeyError, match=message):
        bridge.from_torch(torch_model, torch.randn(2, 4), output=output)
