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
from pathlib import Path
from typing import Any

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
