"""SFT: loss only on the assistant turns of chat examples (or of trajectories, plans and reports, as
`dr data sft` reads them), packed into `max_len` rows. Checkpoints are Hugging Face folders; `resume`
continues exactly."""

from __future__ import annotations

from dr_train.config import SFTConfig
from dr_train.recipes import lm
from dr_train.trainer import Summary


def run(config: SFTConfig) -> Summary | None:
    return lm.run(config)
