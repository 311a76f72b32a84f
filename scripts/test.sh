#!/usr/bin/env bash
# The test command: set up what is missing, lint, type-check, then run the tests in parallel.
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh --fast          # the edit-test loop: lint, types, and the tests not marked slow
#                                        # (about 6 minutes on 2 cores against about 29: README)
#   bash scripts/test.sh tests/core -x   # extra arguments go to pytest
# pytest's summary says how long a run took, and lists its 15 slowest tests (candidates for the slow mark).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=()
if [ "${1:-}" = --fast ]; then
    shift
    fast=(-m "not slow")
fi
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy  # packages/, kernels/, cli/, scripts/ and tests/, as pyproject.toml's [tool.mypy] says
exec .venv/bin/python -m pytest -n auto --durations=15 ${fast[@]+"${fast[@]}"} "$@"
