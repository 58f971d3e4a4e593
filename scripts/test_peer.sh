#!/usr/bin/env bash
# The peer suites: test cases generated at test time from the installed PyTorch (OpInfo)
# and ONNX (backend node cases, light models), run against the bridge. Slow (tens of
# minutes on 2 cores), so they are not part of scripts/test.sh; see README, "Tests".
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -m peer tests/peer -q -o console_output_style=count "$@"
