"""Checkpoints: Hugging Face folders (safetensors, config, tokenizer) plus what an exact resume needs.

`OUT/checkpoint-STEP/` every N steps and the final model in `OUT/` itself, each with `trainer_state.json`
written last, so a folder without it is an interrupted save and is ignored. Every folder is written as
`NAME.partial` and renamed when complete. Optimizer state and RNG states sit beside the weights
(`optimizer.pt`, `rng.pt`; DeepSpeed's own partitioned states under `deepspeed/`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel

STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `out`, oldest first."""
    found = []
    if out.is_dir():
        for child in out.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and (child / STATE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1][1] if found else None


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE).read_text())


def write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, folder / STATE)


def staging(out: Path, name: str) -> Path:
    """An empty `NAME.partial` folder to write a checkpoint into."""
    folder = out / f"{name}.partial"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def publish(folder: Path, out: Path, name: str | None, keep: int) -> Path:
    """Move a finished staging folder into place: `OUT/NAME`, or (name None) its files into `OUT` itself."""
    if name is None:
        # the final model: every file but the state first, the state last (it marks the folder complete)
        for child in sorted(folder.iterdir(), key=lambda p: p.name == STATE):
            target = out / child.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(child, target)
        folder.rmdir()
        return out
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    os.replace(folder, target)
    found = checkpoints(out)
    for _, old in found[: max(0, len(found) - keep)] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_model(model: Any, folder: Path, state_dict: Any = None) -> None:
    """Save weights and config as a server should load them: without dr_kernels' patch, KV cache on."""
    from dr_kernels.patch import is_patched, patch, unpatch

    patched = is_patched(model)
    use_cache = model.config.use_cache
    if patched:
        unpatch(model)
    model.config.use_cache = True
    try:
        model.save_pretrained(folder, state_dict=state_dict)
    finally:
        model.config.use_cache = use_cache
        if patched:
            patch(model)


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop the metric lines of steps after `step` (they will be trained again), and a torn
    line (a disk that filled up mid-write), with a warning."""
    if not path.exists():
        return
    kept = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            from dr_core.log import logger

            logger.warning("%s:%d: a torn metrics line, dropped: %.60s", path, lineno, line)
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class MetricLog:
    """A run's metrics file (one JSON record per line), written by the first rank only. `resume(step)`
    drops what a resumed run trains again (trim_metrics)."""

    def __init__(self, path: Path, main: bool = True) -> None:
        self.path = path
        self.main = main

    def resume(self, step: int) -> None:
        if self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trim_metrics(self.path, step)

    def write(self, record: dict[str, Any]) -> None:
        if self.main:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def save_run(
    out: Path,
    name: str | None,
    *,
    dist: Any,
    backend: Any,
    module: Any,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int,
    state_dict: Any = None,
    extra: Any = None,
) -> None:
    """Write `OUT/NAME` (or the final model into `OUT` when `name` is None), as every trainer saves: the
    model as a Hugging Face folder, its tokenizer, the optimizer (`backend`'s; DeepSpeed's sharded state on
    every rank), the RNG, `extra(folder)` (e.g. a value head), and `state` (trainer_state.json, with
    `done`), staged and then published atomically. Every rank calls it."""
    import torch

    from dr_train.distributed import barrier

    tag = name or "final"
    folder = staging(out, tag) if dist.main else out / f"{tag}.partial"
    if backend.sharded:
        barrier(dist)  # the first rank has emptied the folder
        backend.save(folder)
    if dist.main:
        save_model(module, folder, state_dict)
        tokenizer.save_pretrained(folder)
        if not backend.sharded:
            backend.save(folder)
        torch.save(rng_state(), folder / "rng.pt")
        if extra is not None:
            extra(folder)
        write_state(folder, {**state, "done": name is None})
        publish(folder, out, name, keep)
    barrier(dist)


def settings_of(config: BaseModel, free: Collection[str]) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues: every field of `config` but the
    `free` ones, which change neither the model nor the optimisation (where outputs go, how often to
    save, how many processes). Derived from the model's fields, so a new field is compared unless it is
    declared free."""
    return {k: v for k, v in config.model_dump(mode="json").items() if k not in free}


def refuse_changed_finished(out: Path, now: dict[str, Any]) -> None:
    """A finished run in `out` asked for again with settings that differ from those it was trained with:
    refused, as a resume of an unfinished one is (the output would not be what the flags say)."""
    saved = read_state(out).get("settings")
    if isinstance(saved, dict):
        check_settings(out, saved, now)


def check_settings(
    folder: Path, saved: dict[str, Any], now: dict[str, Any], before: dict[str, Any] | None = None
) -> None:
    """Refuse to resume `folder` with settings that change the result (learning rate, schedule, batch,
    clipping, seed, ...): the run would no longer be the one that was started. A setting a checkpoint of an
    older dr did not record is compared with `before`'s value for it (what that dr did) where given, else
    not at all."""
    from dr_core.errors import InputError

    now = json.loads(json.dumps(now))  # tuples as lists, as the saved state has them
    saved = {**(before or {}), **saved}
    changed = [f"{k} {saved[k]!r} then, {v!r} now" for k, v in now.items() if k in saved and saved[k] != v]
    if changed:
        raise InputError(
            f"--resume: {folder} was trained with other settings ({'; '.join(changed)}); resume with the "
            "same ones, or start a new run in another --out"
        )


def resume_point(out: Path, resume: bool) -> tuple[bool, Path | None]:
    """(finished, checkpoint to resume from) for a run writing to `out`; a run already there without
    --resume is refused rather than overwritten."""
    from dr_core.errors import InputError

    finished = (out / STATE).is_file() and read_state(out).get("done", False)
    if resume:
        return finished, None if finished else latest(out)
    if latest(out) is not None or (out / STATE).is_file():
        raise InputError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return False, None
