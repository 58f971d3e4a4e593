#!/usr/bin/env bash
# Install jaxattr with its test oracles, then run the whole test suite.
#
# torch is pinned to the local CPU build (2.13.0); zennit 0.5.1 declares torchvision, which
# cannot load here, so it is installed without dependencies (its real needs, click, numpy
# and Pillow, come with the `test` extra) and tests/conftest.py stubs torchvision. TorchRay
# 1.0.0.2 likewise (it imports torch, matplotlib, Pillow, packaging and torchvision names).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".[test]"
python -m pip install -q --disable-pip-version-check --no-deps "zennit==0.5.1"
python -m pip install -q --disable-pip-version-check --no-deps "torchray==1.0.0.2"
# Two workers (pytest-xdist), one test file per worker at a time (--dist loadfile keeps a
# module's models and compiled programs in one process); JAXATTR_TEST_WORKERS=0 runs serially.
exec python -m pytest tests jaxattr bridge README.md docs --doctest-modules --doctest-glob="*.md" \
    -n "${JAXATTR_TEST_WORKERS:-2}" --dist loadfile -v --durations=20 "$@"
