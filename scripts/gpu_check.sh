#!/usr/bin/env bash
# One prepared GPU check on a bare machine (see scripts/gpu_check.py for what it runs and writes):
#   bash scripts/gpu_wheels.sh                   # once, on a machine with pip: the wheels into .whl/
#   bash scripts/gpu_check.sh [--out DIR]        # there: its own python3, no pip resolution, no network
#   bash scripts/gpu_check.sh --cpu-smoke        # the same steps on this CPU with tiny shapes (CI)
# The carried wheels go into a temporary site folder; the project's packages are used from the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if [ "${1:-}" = "--cpu-smoke" ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    python=.venv/bin/python   # CI: the environment scripts/setup.sh made
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
tree=""
for src in packages/*/src kernels/src cli; do tree="$tree:$PWD/$src"; done
export PYTHONPATH="${tree#:}${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" scripts/gpu_check.py "$@"
