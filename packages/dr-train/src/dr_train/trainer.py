"""The training loop of `dr train midtrain` and `dr train sft`, top to bottom.

A step takes `rows_per_step` packed rows (split across data-parallel ranks; with `sp` > 1 the ranks form
groups of `sp` that each hold one slice of the same row, DeepSpeed's Ulysses sequence parallelism). Its
loss is the sum of the token losses of all those rows divided by how many tokens carry a label in the
whole step, so every learnt token weighs the same however the documents fell into rows. The data order
is a function of (seed, epoch) and the learning rate a function of the step, so a run resumed from a
checkpoint (weights, optimizer, RNG) continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from pydantic import BaseModel, Field

from dr_core.errors import InputError
from dr_core.log import logger, progress
from dr_train import checkpoint
from dr_train.backend import TrainBackend, make_backend
from dr_train.chat import IGNORE
from dr_train.config import TrainConfig
from dr_train.cpu import checkpoint_kwargs
from dr_train.data import Dataset
from dr_train.distributed import Dist
from dr_train.pack import Row
from dr_train.rows import epoch_order, row_flops, row_tensors, shard, token_losses

# Dense bf16 tensor-core peaks (FLOP/s) by device name, for MFU; unknown devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}


class Summary(BaseModel):
    """What a finished mid-training or SFT run prints on stdout."""

    out: str
    steps: int
    tokens: int
    label_tokens: int
    loss: float | None
    eval_loss: float | None = None
    pack: dict[str, int] = Field(default_factory=dict)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr × min_lr_ratio` at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, total - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """One run: a model, a dataset of packed rows, and the settings. `run()` trains to the end."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        data: Dataset,
        config: TrainConfig,
        dist: Dist | None = None,
        device: Any = None,
        eval_data: Dataset | None = None,
        resume_from: Path | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.data = data
        self.eval_data = eval_data
        self.config = config
        self.dist = dist or Dist()
        self.device = device or torch.device("cpu")
        self.on_step = on_step
        self.out = Path(config.out)
        # ranks r·sp … r·sp+sp-1 share a row (DeepSpeed's sequence-parallel groups); the groups split rows
        self.sp_rank = self.dist.rank % config.sp
        self.dp_rank = self.dist.rank // config.sp
        self.dp_world = world = self.dist.world // config.sp
        wanted = config.tokens_per_step or config.max_len * world
        self.micro_steps = max(1, round(wanted / (config.max_len * world)))
        if len(data.rows) < self.micro_steps * world:
            self.micro_steps = max(1, len(data.rows) // world)
            logger.warning(
                "only %d rows: a step takes %d per rank instead of the %d --tokens-per-step asks for",
                len(data.rows),
                self.micro_steps,
                round(wanted / (config.max_len * world)),
            )
        self.rows_per_step = self.micro_steps * world
        self.steps_per_epoch = len(data.rows) // self.rows_per_step
        if self.steps_per_epoch == 0:
            raise InputError(f"{len(data.rows)} packed rows cannot feed {world} ranks; give more data")
        planned = math.ceil(config.epochs * self.steps_per_epoch)
        self.total_steps = config.max_steps if config.max_steps is not None else planned
        self.step = 0
        self.tokens_seen = 0
        self.resume_from = resume_from
        self._setup()

    # ---- setup -------------------------------------------------------------------------------------

    def _setup(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr has our own progress
        config = self.config
        model = self.model
        if config.kernels:
            from dr_kernels import patch

            patch(model)
        if config.grad_ckpt:
            kwargs = checkpoint_kwargs(self.device, selective=config.zero != 3)
            if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
        model.train()
        self.params = sum(p.numel() for p in model.parameters())
        mpu = self._sequence_parallel(model) if config.sp > 1 else None
        self.backend: TrainBackend = make_backend(
            model,
            config.optim,
            config.deepspeed_settings,
            device=self.device,
            micro_steps=self.micro_steps,
            world=self.dp_world,
            bf16=config.bf16,
            mpu=mpu,
        )
        self.module = self.backend.module
        torch.manual_seed(config.seed)
        if self.resume_from is not None:
            self._load(self.resume_from)

    def _sequence_parallel(self, model: Any) -> Any:
        """Route attention through DeepSpeed's Ulysses wrapper; returns its process groups for the backend."""
        if not self.config.kernels:
            raise InputError(
                "--sp needs the kernels' packed attention (drop --no-kernels): Ulysses discards the 4-D "
                "mask that keeps packed documents apart"
            )
        if not self.config.uses_deepspeed:
            raise InputError("--sp runs under DeepSpeed: add --zero 0, 2 or 3")
        text = model.config.get_text_config()
        heads, kv_heads, sp = text.num_attention_heads, text.num_key_value_heads, self.config.sp
        if heads % sp or (kv_heads % sp and sp % kv_heads):
            raise InputError(
                f"--sp {sp}: the model's {heads} attention heads and {kv_heads} key/value heads must "
                "split evenly across the sequence-parallel ranks"
            )
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        return UlyssesSPAttentionHF.register_with_transformers(
            model,
            core_attn_implementation=model.config._attn_implementation,
            sequence_parallel_size=sp,
            micro_batch_size=1,
            seq_length_is_variable=True,
        )

    def _batch(self, row: Row) -> dict[str, Any]:
        pad_id = self.module.config.pad_token_id or 0
        batch = row_tensors(row, self.device, pad_id)
        if self.config.sp == 1:
            return batch
        return shard(batch, self.config.sp, self.sp_rank, pad_id)

    def _load(self, folder: Path) -> None:
        state = checkpoint.read_state(folder)
        self.step = state["step"]
        self.tokens_seen = state["tokens"]
        self.backend.load(folder)
        checkpoint.set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        logger.info("resumed from %s at step %d", folder, self.step)

    # ---- the loop ----------------------------------------------------------------------------------

    def step_indices(self, step: int) -> list[int]:
        """Which rows (of every rank) make up `step`: a function of the seed and the step alone."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.data.rows), self.config.seed, epoch)
        return order[index * self.rows_per_step : (index + 1) * self.rows_per_step]

    def step_rows(self, chosen: list[int]) -> list[Row]:
        """The rows this rank trains on, of the step's rows."""
        return [self.data.rows[i] for i in chosen[self.dp_rank :: self.dp_world]]

    def step_label_tokens(self, chosen: list[int]) -> int:
        """Learnt tokens in the whole step (all ranks): the loss's denominator."""
        return sum(sum(1 for x in self.data.rows[i].labels if x != IGNORE) for i in chosen)

    def forward_backward(self, rows: list[Row], normalizer: int) -> tuple[float, int]:
        """Gradients of the step's loss over this rank's `rows` (a sum over their learnt tokens divided by
        `normalizer`, the step's count); returns the summed loss and the tokens seen."""
        total = 0.0
        tokens = 0
        offload = (
            torch.autograd.graph.save_on_cpu(pin_memory=self.device.type == "cuda")
            if self.config.offload_activations
            else nullcontext()
        )
        # DeepSpeed sums gradients over every rank and divides by the data-parallel ranks (sequence-parallel
        # ranks each hold part of one row's loss); the step's loss is a sum over all its learnt tokens
        scale = self.dp_world / normalizer
        for row in rows:
            batch = self._batch(row)
            with self.backend.autocast(), offload:
                summed = token_losses(self.module, batch, self.config.kernels, self.backend.zero3)
            self.backend.backward(summed * scale)
            total += float(summed.detach())
            tokens += len(row) if self.sp_rank == 0 else 0
        return total, tokens

    def reduce(self, value: float) -> float:
        if self.dist.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return float(tensor.item())

    def run(self, before: dict[str, Any] | None = None) -> Summary:
        """Train to the end; the summary. `before`: what ran before the loop (the recipe's copy drills),
        recorded with the final model's state."""
        config = self.config
        metrics = checkpoint.MetricLog(self.out / "metrics.jsonl", self.dist.main)
        metrics.resume(self.step)
        layers = self.module.config.num_hidden_layers
        hidden = self.module.config.hidden_size
        peak = self._peak_flops()
        last_loss = None
        eval_loss = None
        steps = range(self.step, self.total_steps)
        for step in progress(steps, f"{config.stage}", total=len(steps)):
            chosen = self.step_indices(step)
            rows = self.step_rows(chosen)
            normalizer = self.step_label_tokens(chosen)
            lr = lr_at(step, self.total_steps, config)
            started = time.perf_counter()
            summed, tokens = self.forward_backward(rows, normalizer)
            norm = self.backend.step(lr)
            self._sync()
            elapsed = time.perf_counter() - started
            summed = self.reduce(summed)
            tokens = int(self.reduce(tokens))
            flops = self.reduce(
                sum(row_flops(r, self.params, layers, hidden) for r in rows) if self.sp_rank == 0 else 0.0
            )
            self.step = step + 1
            self.tokens_seen += tokens
            last_loss = summed / normalizer
            record = {
                "step": self.step,
                "epoch": round(step / self.steps_per_epoch, 4),
                "loss": round(last_loss, 6),
                "lr": lr,
                "grad_norm": round(norm, 6),
                # per step; the step's tokens and its learnt ones, and all tokens trained on so far
                "tokens": tokens,
                "label_tokens": normalizer,
                "tokens_seen": self.tokens_seen,
                "tokens_per_s": round(tokens / elapsed, 1),
                "mfu": round(flops / elapsed / (peak * self.dist.world), 4) if peak else None,
                "memory_gib": round(self._memory_gib(), 3),
            }
            if self.device.type == "cpu":
                # what the process still holds between steps, which can show growth over a run
                # (memory_gib is the peak so far)
                record["rss_gib"] = round(_resident_gib(), 3)
            if self.eval_data is not None and config.eval_every and self.step % config.eval_every == 0:
                eval_loss = record["eval_loss"] = round(self.evaluate(), 6)
            if self.dist.main and (self.step % config.log_every == 0 or self.step == self.total_steps):
                metrics.write(record)
                logger.info(
                    "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                    self.step,
                    self.total_steps,
                    last_loss,
                    lr,
                    record["tokens_per_s"],
                )
            if self.on_step is not None:
                self.on_step(self.step, record)
            if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                self.save(f"checkpoint-{self.step}")
        if self.eval_data is not None and (
            eval_loss is None or not config.eval_every or self.total_steps % config.eval_every
        ):
            eval_loss = self.evaluate()
            metrics.write({"step": self.step, "eval_loss": round(eval_loss, 6)})
        summary = Summary(
            out=str(self.out),
            steps=self.step,
            tokens=self.tokens_seen,
            label_tokens=self.data.label_tokens,
            loss=None if last_loss is None else round(last_loss, 6),
            eval_loss=None if eval_loss is None else round(eval_loss, 6),
            pack=asdict(self.data.stats),
        )
        self.save(None, summary=summary.model_dump() | (before or {}))
        return summary

    def evaluate(self) -> float:
        assert self.eval_data is not None
        model = self.module
        model.eval()
        total, count = 0.0, 0.0
        rows = self.eval_data.rows[self.dp_rank :: self.dp_world]
        with torch.no_grad():
            for row in rows:
                batch = self._batch(row)
                total += float(token_losses(model, batch, self.config.kernels, self.backend.zero3))
                count += int((batch["labels"] != IGNORE).sum())
        model.train()
        total, count = self.reduce(total), self.reduce(count)
        return total / max(count, 1)

    # ---- checkpoints -------------------------------------------------------------------------------

    def save(self, name: str | None, summary: dict[str, Any] | None = None) -> None:
        """Write `OUT/NAME` (or the final model into `OUT`): weights, tokenizer, optimizer, RNG, state."""
        state = {
            "stage": self.config.stage,
            "step": self.step,
            "total_steps": self.total_steps,
            "tokens": self.tokens_seen,
            "data": self.data.fingerprint(),
            "world": self.dist.world,
            "settings": self.config.resume_keys(),
            **({"summary": summary} if summary else {}),
        }
        checkpoint.save_run(
            self.out,
            name,
            dist=self.dist,
            backend=self.backend,
            module=self.module,
            tokenizer=self.tokenizer,
            state=state,
            keep=self.config.keep,
            state_dict=self.backend.model_state(),  # every rank: ZeRO-3 gathers the parameters
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _memory_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        # peak resident memory of this process (Linux reports KiB)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def _peak_flops(self) -> float | None:
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _resident_gib() -> float:
    """This process's resident memory now (Linux /proc/self/statm; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
