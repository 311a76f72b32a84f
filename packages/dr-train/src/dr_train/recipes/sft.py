"""SFT: loss only on the assistant turns of chat examples (or of trajectories, plans and reports, as
`dr data sft` reads them), packed into `max_len` rows. Checkpoints are Hugging Face folders; `resume`
continues exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dr_train.data import LongPolicy
from dr_train.recipes import lm
from dr_train.trainer import Summary


class SFTConfig(lm.LMConfig):
    stage: Literal["sft"] = "sft"
    out: Path = Path("runs/sft")
    long: LongPolicy = "drop"
    lr: float = 1e-5


def run(config: SFTConfig) -> Summary | None:
    return lm.run(config)
