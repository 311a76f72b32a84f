"""The training loop of `dr train midtrain` and `dr train sft`, top to bottom.

A step takes `rows_per_step` packed rows (split across ranks). Its loss is the sum of the token losses of
all those rows divided by how many tokens carry a label in the whole step, so every learnt token weighs the
same however the documents fell into rows. The data order is a function of (seed, epoch) and the learning
rate a function of the step, so a run resumed from a checkpoint (weights, optimizer, RNG) continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dr_core.errors import InputError
from dr_core.log import logger
from dr_train import checkpoint
from dr_train.chat import IGNORE
from dr_train.data import Dataset
from dr_train.distributed import Dist
from dr_train.pack import Row

# Dense bf16 tensor-core peaks (FLOP/s) by device name, for MFU; unknown devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}


@dataclass
class TrainConfig:
    stage: str
    out: Path
    max_len: int = 32768
    tokens_per_step: int | None = None  # None: one row per rank per step
    lr: float = 1e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    save_every: int = 0
    keep: int = 2
    eval_every: int = 0
    seed: int = 0
    bf16: bool = False
    kernels: bool = True
    grad_ckpt: bool = True
    offload_activations: bool = False
    zero: int | None = None
    offload: bool = False
    deepspeed: str | None = None
    log_every: int = 1

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero is not None or self.deepspeed is not None

    def resume_keys(self) -> dict[str, Any]:
        """Settings a resumed run must share with the one it continues."""
        return {"max_len": self.max_len, "tokens_per_step": self.tokens_per_step, "seed": self.seed}


@dataclass
class Summary:
    out: str
    steps: int
    tokens: int
    label_tokens: int
    loss: float | None
    eval_loss: float | None = None
    pack: dict[str, int] = field(default_factory=dict)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr × min_lr_ratio` at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, total - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_order(rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(rows))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def row_tensors(row: Row, device: Any) -> dict[str, Any]:
    import torch

    return {
        "input_ids": torch.tensor([row.input_ids], device=device),
        "position_ids": torch.tensor([row.position_ids], device=device),
        "labels": torch.tensor([*row.labels[1:], IGNORE], device=device),
        "doc_lengths": document_lengths(row),
    }


def row_flops(row: Row, params: int, layers: int, hidden: int) -> float:
    """Training FLOPs of one row: 6·params per token plus causal attention within each document."""
    squares = sum(n * n for n in document_lengths(row))
    return 6.0 * params * len(row) + 6.0 * layers * hidden * squares


def document_lengths(row: Row) -> list[int]:
    lengths: dict[int, int] = {}
    for doc in row.doc_ids:
        lengths[doc] = lengths.get(doc, 0) + 1
    return list(lengths.values())


def token_losses(model: Any, batch: dict[str, Any], kernels: bool, zero3: bool) -> Any:
    """Summed cross-entropy of one packed row (targets already shifted into `labels`)."""
    import torch
    import torch.nn.functional as F

    if kernels:
        from dr_kernels import linear_cross_entropy
        from dr_kernels.attention import cu_seqlens_of

        cu = cu_seqlens_of(batch["doc_lengths"], batch["input_ids"].device)
        longest = max(batch["doc_lengths"])
        hidden = model.model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=longest,
            max_length_k=longest,
        ).last_hidden_state[0]
        head = model.lm_head
        gather = nullcontext()
        if zero3:
            import deepspeed

            # ZeRO-3 partitions the head; its weight is whole only inside this context
            gather = deepspeed.zero.GatheredParameters([head.weight], modifier_rank=None)
        with gather:
            return linear_cross_entropy(hidden, head.weight, batch["labels"], bias=head.bias, reduction="sum")
    from dr_train.pack import document_mask

    lengths = batch["doc_lengths"]
    mask = None
    if len(lengths) > 1:
        docs = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        mask = document_mask(docs).to(batch["input_ids"].device)
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask
    ).logits
    return F.cross_entropy(logits[0].float(), batch["labels"], ignore_index=IGNORE, reduction="sum")


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
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.data = data
        self.eval_data = eval_data
        self.config = config
        self.dist = dist or Dist()
        self.device = device or torch.device("cpu")
        self.on_step = on_step
        self.out = Path(config.out)
        world = self.dist.world
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
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr has our own progress
        config = self.config
        model = self.model
        if config.kernels:
            from dr_kernels import patch

            patch(model)
        if config.grad_ckpt:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.train()
        self.params = sum(p.numel() for p in model.parameters())
        self.zero3 = False
        if config.uses_deepspeed:
            from dr_train.distributed import deepspeed_config, require_deepspeed

            deepspeed = require_deepspeed()
            ds_config = deepspeed_config(
                config.zero,
                config.offload,
                config.deepspeed,
                self.micro_steps,
                self.dist.world,
                config.clip,
                config.bf16,
                config.lr,
                config.betas,
                config.weight_decay,
            )
            self.zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
            optimizer = None
            if "optimizer" not in ds_config:
                optimizer = torch.optim.AdamW(
                    model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
                )
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=ds_config
            )
            self.module = self.engine.module
        else:
            self.engine = None
            model.to(self.device)
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )
            self.module = model
        torch.manual_seed(config.seed)
        if self.resume_from is not None:
            self._load(self.resume_from)

    def _load(self, folder: Path) -> None:
        import torch

        state = checkpoint.read_state(folder)
        self.step = state["step"]
        self.tokens_seen = state["tokens"]
        if self.engine is not None:
            self.engine.load_checkpoint(str(folder / "deepspeed"), load_module_strict=False)
        else:
            self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
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
        return [self.data.rows[i] for i in chosen[self.dist.rank :: self.dist.world]]

    def step_label_tokens(self, chosen: list[int]) -> int:
        """Learnt tokens in the whole step (all ranks): the loss's denominator."""
        return sum(sum(1 for x in self.data.rows[i].labels if x != IGNORE) for i in chosen)

    def _forward_backward(self, rows: list[Row], normalizer: int) -> tuple[float, int]:
        import torch

        total = 0.0
        tokens = 0
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.config.bf16 and self.engine is None
            else nullcontext()
        )
        offload = (
            torch.autograd.graph.save_on_cpu(pin_memory=self.device.type == "cuda")
            if self.config.offload_activations
            else nullcontext()
        )
        # DeepSpeed averages gradients over ranks; the step's loss is a sum over every rank's tokens
        scale = self.dist.world / normalizer
        model = self.engine if self.engine is not None else self.module
        for index, row in enumerate(rows):
            batch = row_tensors(row, self.device)
            with autocast, offload:
                summed = token_losses(
                    self.module if self.engine is None else self.engine.module,
                    batch,
                    self.config.kernels,
                    self.zero3,
                )
            loss = summed * scale
            if self.engine is not None:
                model.backward(loss, scale_wrt_gas=False)
                if index < len(rows) - 1:
                    # DeepSpeed counts micro-batches in step(); only the last one updates (_optimizer_step)
                    model.step()
            else:
                loss.backward()
            total += float(summed.detach())
            tokens += len(row)
        return total, tokens

    def _optimizer_step(self, lr: float) -> float:
        import torch

        if self.engine is not None:
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _reduce(self, value: float) -> float:
        if self.dist.world == 1:
            return value
        import torch
        import torch.distributed as torch_dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return float(tensor.item())

    def run(self) -> Summary:
        from dr_core.log import progress

        config = self.config
        metrics_path = self.out / "metrics.jsonl"
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint.trim_metrics(metrics_path, self.step)
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
            summed, tokens = self._forward_backward(rows, normalizer)
            norm = self._optimizer_step(lr)
            self._sync()
            elapsed = time.perf_counter() - started
            summed = self._reduce(summed)
            tokens = int(self._reduce(tokens))
            flops = self._reduce(sum(row_flops(r, self.params, layers, hidden) for r in rows))
            self.step = step + 1
            self.tokens_seen += tokens
            last_loss = summed / normalizer
            record = {
                "step": self.step,
                "epoch": round(step / self.steps_per_epoch, 4),
                "loss": round(last_loss, 6),
                "lr": lr,
                "grad_norm": round(norm, 6),
                "tokens": self.tokens_seen,
                "label_tokens": normalizer,
                "tokens_per_s": round(tokens / elapsed, 1),
                "mfu": round(flops / elapsed / (peak * self.dist.world), 4) if peak else None,
                "memory_gib": round(self._memory_gib(), 3),
            }
            if self.eval_data is not None and config.eval_every and self.step % config.eval_every == 0:
                eval_loss = record["eval_loss"] = round(self.evaluate(), 6)
            if self.dist.main and (self.step % config.log_every == 0 or self.step == self.total_steps):
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
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
            if self.dist.main:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps({"step": self.step, "eval_loss": round(eval_loss, 6)}) + "\n")
        summary = Summary(
            out=str(self.out),
            steps=self.step,
            tokens=self.tokens_seen,
            label_tokens=self.data.label_tokens,
            loss=None if last_loss is None else round(last_loss, 6),
            eval_loss=None if eval_loss is None else round(eval_loss, 6),
            pack=asdict(self.data.stats),
        )
        self.save(None, summary=asdict(summary))
        return summary

    def evaluate(self) -> float:
        import torch

        assert self.eval_data is not None
        model = self.module
        model.eval()
        total, count = 0.0, 0
        rows = self.eval_data.rows[self.dist.rank :: self.dist.world]
        with torch.no_grad():
            for row in rows:
                batch = row_tensors(row, self.device)
                total += float(token_losses(model, batch, self.config.kernels, self.zero3))
                count += sum(1 for x in row.labels if x != IGNORE)
        model.train()
        total, count = self._reduce(total), self._reduce(count)
        return total / max(count, 1)

    # ---- checkpoints -------------------------------------------------------------------------------

    def save(self, name: str | None, summary: dict[str, Any] | None = None) -> None:
        """Write `OUT/NAME` (or the final model into `OUT`): weights, tokenizer, optimizer, RNG, state."""
        import torch

        from dr_train.distributed import barrier

        folder = checkpoint.staging(self.out, name or "final") if self.dist.main else None
        state_dict = None
        if self.engine is not None:
            tag_dir = self.out / f"{name or 'final'}.partial"
            barrier(self.dist)
            self.engine.save_checkpoint(str(tag_dir / "deepspeed"), tag="state")
            if self.zero3:
                state_dict = self.engine._zero3_consolidated_16bit_state_dict()
            elif self.dist.main:
                state_dict = self.module.state_dict()
        if self.dist.main:
            assert folder is not None
            checkpoint.save_model(self.module, folder, state_dict)
            self.tokenizer.save_pretrained(folder)
            if self.engine is None:
                torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(checkpoint.rng_state(), folder / "rng.pt")
            state = {
                "stage": self.config.stage,
                "step": self.step,
                "total_steps": self.total_steps,
                "tokens": self.tokens_seen,
                "data": self.data.fingerprint(),
                "world": self.dist.world,
                "settings": self.config.resume_keys(),
                "done": name is None,
            }
            if summary:
                state["summary"] = summary
            checkpoint.write_state(folder, state)
            checkpoint.publish(folder, self.out, name, self.config.keep)
        barrier(self.dist)

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _memory_gib(self) -> float:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        # peak resident memory of this process (Linux reports KiB)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def _peak_flops(self) -> float | None:
        import torch

        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def print_summary(summary: Summary, stream: Any = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(asdict(summary)) + "\n")
    stream.flush()
