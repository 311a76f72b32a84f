"""Where the policy samples during RL: in this process (`LocalPolicy`, Hugging Face generate on the weights
being trained), or in vLLM engines (`EnginePolicy` over `VLLMServers`), which must be given the trainer's
weights after every update and are then checked to hold them.

The sync writes the policy as a folder every engine reloads (`--weight-sync disk`), or the first rank
broadcasts it into every engine over NCCL (`--weight-sync nccl`, dr_train.rl.weight_sync); either way each
engine's log-probabilities of a probe sequence must then match the trainer's within `sync_tolerance`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dr_core.llm import ChatModel
from dr_core.log import logger
from dr_train.chat import IGNORE
from dr_train.config import RLConfig
from dr_train.distributed import Dist, barrier
from dr_train.rl.engines import EngineError, EnginePolicy, VLLMServers, probe_tokens, write_engine_weights
from dr_train.rl.policy import LocalPolicy
from dr_train.rl.rollouts import Sequence
from dr_train.rl.update import forward


def engine_folder(out: Path) -> Path:
    """Where the policy is written for the rollout engines to load and reload."""
    return out / ".rollout-weights"


@dataclass
class Sampler:
    """The policy the agent calls (a `ChatModel`), and, with engines, keeping their weights the trainer's."""

    model: Any
    tokenizer: Any
    config: RLConfig
    dist: Dist
    engines: VLLMServers | None
    sync_tolerance: float = 0.1
    nccl: Any = field(default=None, init=False)  # weight_sync.NcclSync, at the first sync with nccl
    policy: ChatModel = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.config.out)
        if self.engines is not None:
            context = int(getattr(self.model.config, "max_position_embeddings", 32768))
            self.policy = EnginePolicy(self.engines, self.tokenizer, context)
        else:
            self.policy = LocalPolicy(self.model, self.tokenizer)

    @property
    def local(self) -> bool:
        """The policy samples in this process."""
        return self.engines is None

    def idle_s(self) -> float:
        """Seconds so far in which the engines had nothing to sample (0 without engines)."""
        return self.engines.idle_s() if self.engines is not None else 0.0

    def stop(self) -> None:
        """End sampling in the engines: requests in flight are abandoned."""
        if self.engines is not None:
            self.engines.stop()

    def sync(self, step: int) -> dict[str, float]:
        """Push the policy after `step` updates into every rollout engine (the first rank writes it; every
        engine reloads it), then check each holds it: its log-probabilities of a probe sequence against the
        trainer's. The sync's time and the probe's worst gap, on the first rank."""
        engines = self.engines
        assert engines is not None
        started = time.perf_counter()
        version = f"step-{step}"
        worst = 0.0
        if self.dist.main:
            pause = self.config.sync_pause if self.config.max_staleness else None
            if self.config.weight_sync == "nccl":
                if self.nccl is None:
                    from dr_train.rl.weight_sync import NcclSync

                    self.nccl = NcclSync(engines.urls, self.model)
                engines.sync(None, version, step, pause, push=self.nccl.send)
            else:
                folder = write_engine_weights(self.model, self.tokenizer, engine_folder(self.out))
                engines.sync(folder, version, step, pause)
            worst = self._probe(engines, version)
        barrier(self.dist)
        if not self.dist.main:
            return {}
        return {"sync_s": time.perf_counter() - started, "sync_gap_max": worst}

    def _probe(self, engines: VLLMServers, version: str) -> float:
        """The largest gap between any engine's log-probabilities of the probe and the trainer's; raises
        EngineError past `sync_tolerance`."""
        probe = probe_tokens(self.tokenizer)
        with torch.no_grad():
            mine = forward(self.model, Sequence(-1, probe, [*probe[1:], IGNORE]), self.config.kernels)[0]
        worst = 0.0
        for url in engines.urls:
            theirs = torch.tensor(engines.prompt_logprobs(url, probe), device=mine.device)
            gap = float((mine.float() - theirs).abs().max())
            worst = max(worst, gap)
            if gap > self.sync_tolerance:
                raise EngineError(
                    f"rollout engine {url} does not hold the trainer's weights after the sync to "
                    f"{version}: its log-probabilities of a probe differ by up to {gap:.4f} "
                    f"(tolerance {self.sync_tolerance}). Start the engine with the trainer's dtype "
                    "(--dtype float32; vLLM's CPU build computes float32 checkpoints in bfloat16 "
                    "otherwise), from a folder written by dr_train.rl.engines.write_engine_weights (an "
                    "output layer tied to the embeddings is not refreshed by vLLM's reload)"
                )
        logger.info("rollout engines hold %s (probe |Δ logp| ≤ %.2e)", version, worst)
        return worst
