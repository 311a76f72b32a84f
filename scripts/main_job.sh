#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv (once), then run the whole pipeline (scripts/main_job.py).
#   bash scripts/main_job.sh                      # runs/main: the embedded default, one CPU machine
#   bash scripts/main_job.sh --quick --out runs/quick
#   bash scripts/main_job.sh --base-model ./Qwen2.5-7B --teacher endpoint --teacher-base-url URL \
#       --teacher-model M --gpu               # a real base model, a real teacher, a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/main_job.py "$@"
