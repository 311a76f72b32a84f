"""What every recipe shares: the settings of a run as a process (inputs, ranks, resume, rejects), reading a
recipe's config from flags and the `[train.<recipe>]` TOML section, and running it, as one process or as
`--nproc` ranks under torchrun (which start `python -m dr_train RECIPE CONFIG.json`)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel

from dr_core.config import config_file, resolve
from dr_train.config import Precision, RunSettings

C = TypeVar("C", bound="RunSettings")


def native_bf16() -> bool:
    """Whether bf16 trains faster than fp32 here: on a CUDA GPU, or on a CPU with AMX.

    AVX-512 BF16 alone is not enough: without AMX, torch multiplies bf16 at about half its fp32 speed, and a
    training step is slower in bf16 (docs/benchmarks.md, "On a CPU without AMX")."""
    import torch

    if torch.cuda.is_available():
        return True
    return bool(torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: Precision) -> Precision:
    """auto: bf16 autocast (fp32 master weights) where the hardware does bf16 natively, else fp32."""
    if precision != Precision.auto:
        return precision
    return Precision.bf16 if native_bf16() else Precision.fp32


def read_config(cls: type[C], recipe: str, flags: Mapping[str, Any]) -> C:
    """`cls` from its defaults, `[train.<recipe>]` of the config file, DR_TRAIN_<RECIPE>_* variables and
    the flags given (None: not given)."""
    return resolve(cls, f"train.{recipe}", flags)


def rank_rejects(path: str | Path | None, main: bool) -> str | None:
    """Where this rank writes rejected lines: every rank reads the same lines; only the first keeps them."""
    if path is None or main:
        return None if path is None else str(path)
    return str(Path(tempfile.mkdtemp()) / "rejects.jsonl")


def launch(
    recipe: str, config: RunSettings, run: Callable[[Any], BaseModel | dict[str, Any] | None], data: IO[str]
) -> int:
    """Run `recipe` here, or, with `nproc` > 1 in a process not started as a rank, as `nproc` ranks under
    torchrun (DeepSpeed ZeRO-0 unless a stage or a config file was named); the summary goes to `data`.
    Returns the exit status."""
    from dr_train import distributed

    if config.nproc > 1 and distributed.LAUNCHED not in os.environ and "WORLD_SIZE" not in os.environ:
        return relaunch(recipe, config, data)
    summary = run(config)
    if summary is not None and distributed.current().main:
        record = summary.model_dump(mode="json") if isinstance(summary, BaseModel) else summary
        data.write(json.dumps(record) + "\n")
        data.flush()
    distributed.shutdown()  # a rank of several leaves here, its work saved and its output flushed
    return 0


def relaunch(recipe: str, config: RunSettings, data: IO[str]) -> int:
    """`nproc` ranks of `python -m dr_train RECIPE CONFIG.json`; stdin is saved to a file first, and the
    config names it."""
    from dr_train import distributed

    update: dict[str, Any] = {}
    if getattr(config, "zero", None) is None and getattr(config, "deepspeed", None) is None:
        update["zero"] = 0
    saved_stdin = None
    if "-" in config.inputs:
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
            fh.write(sys.stdin.buffer.read())
        saved_stdin = fh.name
        update["inputs"] = [saved_stdin if s == "-" else s for s in config.inputs]
    ranked = config.model_copy(update=update)
    # in the output folder, so the launcher's and the ranks' command lines name the run they belong to
    out = Path(getattr(config, "out", "."))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out, prefix=f".{recipe}-", suffix=".json", delete=False) as cfg:
        cfg.write(ranked.model_dump_json())
    env = {}
    if (toml := config_file()) is not None:  # the agent's and judge's sections, read again by every rank
        env["DR_CONFIG"] = str(toml.resolve())
    try:
        return distributed.relaunch(config.nproc, ["-m", "dr_train", recipe, cfg.name], data, env)
    finally:
        os.unlink(cfg.name)
        if saved_stdin is not None:
            os.unlink(saved_stdin)
