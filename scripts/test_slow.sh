#!/usr/bin/env bash
# The slow tests: heavy cases (big models, parameter sweeps, many compiles) left out of
# scripts/test.sh because a cheaper default test checks the same method against the same
# reference. Same set-up as scripts/test.sh (run that once first for the oracles); see
# README, "Set-up". A later -m replaces the `-m 'not peer and not slow'` of pyproject.toml.
# These run with XLA's default compile effort (the default suite compiles at -O0; see
# conftest.py), so they also cover the programs exactly as users compile them.
set -euo pipefail
export JAXATTR_TEST_XLA_DEFAULTS=1
cd "$(dirname "$0")/.."
exec python -m pytest tests -m slow -n "${JAXATTR_TEST_WORKERS:-2}" --dist loadfile -v \
    --durations=20 "$@"
