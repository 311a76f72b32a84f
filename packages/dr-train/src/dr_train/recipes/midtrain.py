"""Mid-training: next-token loss on every token of documents and rendered conversations, packed into
`max_len` rows (positions restart per document; no attention across documents). Run it at 32K, then again
from that checkpoint at 128K with `rope_theta` or `rope_scaling="yarn:4"`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dr_train.data import LongPolicy
from dr_train.recipes import lm
from dr_train.trainer import Summary


class MidtrainConfig(lm.LMConfig):
    stage: Literal["midtrain"] = "midtrain"
    out: Path = Path("runs/midtrain")
    long: LongPolicy = "split"
    lr: float = 2e-5


def run(config: MidtrainConfig) -> Summary | None:
    return lm.run(config)
