"""Mid-training: next-token loss on every token of documents and rendered conversations, packed into
`max_len` rows (positions restart per document; no attention across documents). Run it at 32K, then again
from that checkpoint at 128K with `rope_theta` or `rope_scaling="yarn:4"`."""

from __future__ import annotations

from dr_train.config import MidtrainConfig
from dr_train.recipes import lm
from dr_train.trainer import Summary


def run(config: MidtrainConfig) -> Summary | None:
    return lm.run(config)
