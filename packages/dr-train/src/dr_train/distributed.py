"""Scale-out: DeepSpeed ZeRO presets, process-group setup, and relaunching under torchrun.

`--zero 2|3` (with `--offload`) builds a DeepSpeed config from a preset; `--deepspeed FILE` passes a user's
JSON through untouched except for the fields this trainer owns (batch shape, clipping, precision), which
are filled in when absent. `--nproc N` re-executes the command under `torch.distributed.run`; a command
started by `torchrun`/`deepspeed` itself (WORLD_SIZE set) is one rank of the job and trains as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
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


def deepspeed_config(
    zero: int | None,
    offload: bool,
    user_file: str | None,
    micro_steps: int,
    world: int,
    clip: float,
    bf16: bool,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> dict[str, Any]:
    if user_file:
        try:
            config = json.loads(Path(user_file).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--deepspeed {user_file}: {exc}") from None
    else:
        stage = 0 if zero is None else zero
        if stage not in (0, 1, 2, 3):
            raise InputError(f"--zero {zero}: choose 0, 1, 2 or 3")
        section: dict[str, Any] = {
            "stage": stage,
            "overlap_comm": stage > 0,
            "contiguous_gradients": stage > 0,
        }
        if offload:
            if stage < 2:
                raise InputError("--offload needs --zero 2 or 3")
            section["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
            if stage == 3:
                section["offload_param"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            # so a checkpoint's weights can be written as one Hugging Face folder
            section["stage3_gather_16bit_weights_on_model_save"] = True
        config = {"zero_optimization": section}
        if offload:
            # ZeRO-Offload steps on the CPU with DeepSpeed's own Adam, built from this section
            config["optimizer"] = {
                "type": "AdamW",
                "params": {"lr": lr, "betas": list(betas), "weight_decay": weight_decay},
            }
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    config.setdefault("gradient_accumulation_steps", micro_steps)
    config["train_batch_size"] = (
        config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world
    )
    config.setdefault("gradient_clipping", clip)
    if bf16:
        config.setdefault("bf16", {"enabled": True})
    config.setdefault("steps_per_print", 10**9)
    config.setdefault("wall_clock_breakdown", False)
    return config


def relaunch(nproc: int, argv: list[str], inputs: list[str], stdout: Any = None) -> int:
    """Run this same command as `nproc` ranks under torch.distributed.run; stdin is saved to a file first."""
    args = list(argv)
    saved_stdin = None
    if "-" in inputs:
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
            fh.write(sys.stdin.buffer.read())
        saved_stdin = fh.name
        if "-" in args:
            args = [a if a != "-" else saved_stdin for a in args]
        else:  # read from stdin because no input was named
            args.append(saved_stdin)
    env = dict(os.environ, **{LAUNCHED: "1"})
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
        command = [
            sys.executable,
            "-m",
            "dr_train.distributed",  # torch.distributed.run, less its traceback when a rank fails
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
            "-m",
            "dr_cli.main",
            *args,
        ]
        # the launcher (and, as it stops them on SIGTERM, the ranks) ends with us even when we are SIGKILLed
        return subprocess.call(command, env=env, stdout=stdout, preexec_fn=child_of_this_process())
    finally:
        if saved_stdin is not None:
            os.unlink(saved_stdin)


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
