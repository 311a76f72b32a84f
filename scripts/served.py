"""A model served in the background for the measurement scripts (scripts/judge_job.py,
scripts/real_model_paths.py), which time the requests they send it: the server is started and awaited
before the timed command, so its start-up is not in their figures. Commands that need a model only for
their own run serve it themselves (`dr bench run --serve`, `dr judge score --judge-serve`,
`dr train rl --judge-serve`)."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from dr_commands import DR, engine_for

from dr_core.proc import free_port
from dr_core.server import ManagedServer, ServerError


@contextlib.contextmanager
def served(model: Path, args: argparse.Namespace, log: Path) -> Iterator[str]:
    """`dr serve MODEL` in the background until the block ends (vLLM or transformers serve: `engine_for`);
    yields its OpenAI-compatible base URL."""
    port = free_port()
    if engine_for(model, args) == "vllm":
        # served under its path, which is the name `dr judge` finds a trained judge's prompt version under
        # (vLLM would take the folder's name; transformers serve answers to the model as given)
        engine = ["--engine", "vllm", "--served-model-name", str(model)]
    else:
        engine = ["--engine", "transformers", "--device", "auto" if args.gpu else "cpu"]
    command = [*DR, "serve", str(model), "--port", str(port), "--host", "127.0.0.1", *engine]
    print("$ dr " + shlex.join(command[len(DR) :]) + " &", file=sys.stderr, flush=True)
    server = ManagedServer(command, port, name=f"dr serve {model}", log=log, timeout_s=600)
    try:
        with server:
            yield f"{server.url}/v1"
    except ServerError as exc:
        sys.exit(f"{Path(sys.argv[0]).name}: {exc}")
