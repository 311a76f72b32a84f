"""`dr` commands as the measurement scripts run them (scripts/judge_job.py, scripts/real_model_paths.py):
each printed to stderr as a user would type it, its stdout returned, a failure the end of the script."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from dr_core.proc import child_of_this_process
from dr_core.serving import choose_engine, model_config

DR = [sys.executable, "-m", "dr_cli.main"]


def run(*args: str | Path, stdout: Path | None = None, allow: tuple[int, ...] = ()) -> str:
    command = [*DR, *map(str, args)]
    print("$ dr " + shlex.join(command[len(DR) :]), file=sys.stderr, flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, check=False, preexec_fn=child_of_this_process())
    if result.returncode != 0 and result.returncode not in allow:
        script = Path(sys.argv[0]).stem.replace("_", " ")
        named = " ".join(map(str, args[:2]))
        sys.exit(f"{script}: `dr {named}` failed (exit {result.returncode})")
    text = result.stdout.decode()
    if stdout is not None:
        stdout.write_text(text)
    return text


def engine_for(model: Path, args: argparse.Namespace) -> str:
    """vllm or hf: --engine, or with auto what `dr serve --engine auto` picks for the checkpoint (vLLM where
    it is installed and can serve it: its CPU attention refuses the from-scratch model's head size of 16)."""
    if args.engine != "auto":
        return str(args.engine)
    return "vllm" if choose_engine("auto", model_config(str(model))) == "vllm" else "hf"
