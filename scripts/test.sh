#!/usr/bin/env bash
# The test command: set up what is missing, lint, type-check, then run the tests in parallel.
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/core -x   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy  # packages/, kernels/ and cli/, as pyproject.toml's [tool.mypy] says
exec .venv/bin/python -m pytest -n auto "$@"
