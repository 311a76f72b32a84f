"""`python -m dr_train RECIPE CONFIG.json`: run one recipe from its config file, as one rank.

This is what `dr train --nproc N` starts under torchrun. The config is the recipe's pydantic model as
JSON; the summary goes to stdout (from the first rank), logs to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from pydantic import ValidationError

    from dr_core import log
    from dr_core.errors import DrError
    from dr_core.log import stdout_for_data_only
    from dr_train.recipes import recipe
    from dr_train.recipes.common import launch

    usage = "usage: python -m dr_train {midtrain,sft,rl} CONFIG.json"
    if argv and argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{(__doc__ or '').strip()}")
        return 0
    if len(argv) != 2:
        print(usage, file=sys.stderr)
        return 2
    name, path = argv
    log.setup()
    try:
        cls, run = recipe(name)
        config = cls.model_validate_json(Path(path).read_text())
    except (KeyError, OSError, ValidationError) as exc:
        print(f"python -m dr_train: {exc}", file=sys.stderr)
        return 2
    try:
        with stdout_for_data_only() as data:
            return launch(name, config, run, data)
    except DrError as exc:
        print(f"error: {exc}", file=sys.stderr)  # as `dr` says it
        return exc.exit_code
    except RuntimeError as exc:
        if not lost_peer(exc):
            raise
        # not the cause: the rank that stopped first has said why, and its exit status is the run's
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        rank = os.environ.get("RANK", "?")
        print(f"error: rank {rank}: another rank stopped, and this one with it ({first})", file=sys.stderr)
        return 1


def lost_peer(exc: RuntimeError) -> bool:
    """Whether `exc` is a collective failing because another rank of this run is gone."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistBackendError) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
