"""Scale-out: process groups, DeepSpeed import, and relaunching under torchrun.

`--nproc N` runs a recipe again as N ranks under `torch.distributed.run` (`python -m dr_train RECIPE
CONFIG.json`); a command started by `torchrun`/`deepspeed` itself (WORLD_SIZE set) is one rank of the job
and trains as such. The DeepSpeed config itself is built in `dr_train.backend`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from dr_core.errors import InputError
from dr_core.proc import child_of_this_process, free_port

LAUNCHED = "DR_TRAIN_LAUNCHED"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    return Dist(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(dist: Dist, use_deepspeed: bool) -> Any:
    """The device this rank computes on; sets up the process group when there is more than one rank."""
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", dist.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if use_deepspeed:
        if not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        deepspeed = require_deepspeed()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    elif dist.world > 1:
        raise InputError("training on several processes goes through DeepSpeed: add --zero 0, 2 or 3")
    return device


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as torch_dist

        torch_dist.barrier()


def shutdown() -> None:
    """Leave the process group before the interpreter exits: a group left for exit to tear down can abort
    the process ("terminate called without an active exception") after the work is done."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            # a rank's work is saved and its output flushed: leave without the interpreter's teardown, where
            # the communication library's threads can still abort the process
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def require_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError:
        raise InputError(
            "--zero/--deepspeed/--nproc need DeepSpeed: pip install 'dr-train[deepspeed]' (or deepspeed)"
        ) from None
    return deepspeed


def relaunch(nproc: int, command: list[str], stdout: Any = None, env: dict[str, str] | None = None) -> int:
    """Run `python COMMAND...` as `nproc` ranks under torch.distributed.run; returns the first failed rank's
    exit status (0 when all succeed)."""
    import torch

    env = dict(os.environ, **(env or {}), **{LAUNCHED: "1"})
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    launcher = [
        sys.executable,
        "-m",
        "dr_train.distributed",  # torch.distributed.run, less its traceback when a rank fails
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *command,
    ]
    # the launcher (and, as it stops them on SIGTERM, the ranks) ends with us even when we are SIGKILLed
    return subprocess.call(launcher, env=env, stdout=stdout, preexec_fn=child_of_this_process())


def _launch(argv: list[str]) -> int:
    """torch.distributed.run's main; a failed rank has said why on stderr already, so the launcher's own
    traceback is left out and the first failed rank's exit status is returned."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"rank {rank} failed (exit {failure.exitcode})", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1:]))
