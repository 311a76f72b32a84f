"""`python -m dr_serve api --port P --base-url URL ...`: the research API alone, over a running endpoint.

`dr serve MODEL --api-port P` starts this beside the engine it launched. The API key travels in the
environment (DR_API_API_KEY), never in argv, so `ps` does not show it; the model name in DR_LLM_MODEL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from dr_core import log
    from dr_core.errors import DrError

    parser = argparse.ArgumentParser(prog="python -m dr_serve")
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api", help="Serve the research API over an OpenAI-compatible endpoint.")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, required=True)
    api.add_argument("--base-url", default=None)
    api.add_argument("--runs-dir", type=Path, default=None)
    api.add_argument("--index", type=Path, default=None)
    api.add_argument("--search", default=None)
    api.add_argument("--max-concurrent", type=int, default=None)
    args = parser.parse_args(argv)
    log.setup()
    from dr_serve.cli import run_api

    try:
        run_api(
            args.host,
            args.port,
            None,
            args.max_concurrent,
            args.runs_dir,
            args.base_url,
            None,
            args.index,
            args.search,
        )
    except DrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
