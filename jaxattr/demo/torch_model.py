"""The demo CNN as a ``torch.nn.Module`` with the shipped weights (NCHW), for the bridge.

``jaxattr explain jaxattr.demo.torch_model:demo_cnn IMAGE`` explains it like any torch
model; its logits equal the Flax model's (:func:`jaxattr.demo.load_model`) on the same
images, transposed to NCHW and stored as pixels (see :func:`demo_cnn`). Importing this
module does not import torch; calling :func:`demo_cnn` does.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from jaxattr.demo.model import WEIGHTS


def demo_cnn(path: Path = WEIGHTS) -> Any:
    """The trained demo CNN in torch: (N, 3, 32, 32) pixels in [0, 1] to (N, 4) logits.

    The demo's images range over about [-0.5, 1.5] (noise around a dark background); the
    PNG files ``jaxattr demo`` writes under ``inputs/`` store them as pixels
    ``(x + 0.5) / 2``, and the model's first layer, ``pixels``, maps them back
    (``2 p - 0.5``), as a normalisation layer does. Then ``conv1``, ``conv2``, ``conv3``
    (the last convolution, Grad-CAM's default in ``jaxattr explain``) with ReLU and
    max-pooling, a global mean and ``fc``; classes in :data:`jaxattr.demo.CLASSES` order.

    Example:
        >>> import torch
        >>> demo_cnn()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """
    import torch
    from torch import nn

    class Pixels(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0 - 0.5

    class GlobalMean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    model = nn.Sequential(
        OrderedDict(
            pixels=Pixels(),
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(32, 32, 3, padding=1),
            relu3=nn.ReLU(),
            mean=GlobalMean(),
            fc=nn.Linear(32, 4),
        )
    )
    with np.load(path) as data:
        w = {k: np.asarray(data[k]) for k in data.files}
    state = {}
    for name in ("conv1", "conv2", "conv3"):
        state[f"{name}.weight"] = w[f"{name}/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state[f"{name}.bias"] = w[f"{name}/bias"]
    state["fc.weight"] = w["fc/kernel"].T
    state["fc.bias"] = w["fc/bias"]
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return model.eval()
