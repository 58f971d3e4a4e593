"""Peer suites: test cases generated at test time from the installed PyTorch and ONNX.

Every test here carries the ``peer`` marker, so the default run (``-m 'not peer'`` in
pyproject.toml) leaves them out; ``python -m pytest -m peer tests/peer`` runs them.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/peer/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.peer)
