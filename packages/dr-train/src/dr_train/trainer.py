"""The training loop of `dr train midtrain` and `dr train sft`, top to bottom.

A step takes `rows_per_step` packed rows (split across data-parallel ranks; with `sp` > 1 the ranks form
groups of `sp` that each hold one slice of the same row, DeepSpeed's Ulysses sequence parallelism). Its
loss is the sum of the token losses of all those rows divided by how many tokens carry a label in the
whole step, so every learnt token weighs the same however the documents fell into rows. The data order
is a function of (seed, epoch) and the learning rate a function of the step, so a run resumed from a
checkpoint (weights, optimizer, RNG) continues exactly as the uninterrupted run would have.
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
from dr_train.chat import IGNORE, Tokenized
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
    sp: int = 1  # Ulysses sequence parallelism: ranks that share one row
    log_every: int = 1
    # up to this many steps of copy drills before the first step of a fresh run (0: none)
    copy_warmup: int = 0

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero is not None or self.deepspeed is not None

    def resume_keys(self) -> dict[str, Any]:
        """Settings a resumed run must share with the one it continues: those that change its result."""
        keys = {
            "max_len": self.max_len,
            "tokens_per_step": self.tokens_per_step,
            "seed": self.seed,
            "lr": self.lr,
            "min_lr_ratio": self.min_lr_ratio,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "betas": list(self.betas),
            "clip": self.clip,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "bf16": self.bf16,
        }
        return {**keys, "sp": self.sp} if self.sp > 1 else keys


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


COPY_DOC = 192  # tokens in one copy drill
COPY_TARGET = 0.95  # the copy warm-up ends once this share of copied tokens is predicted right
COPY_DOCS = 32  # drills per step, at least
COPY_LR = 2e-3  # the drills' learning rate, at most


def copy_drill(rng: random.Random, vocabulary: list[int], length: int = COPY_DOC) -> Tokenized:
    """Random tokens in which a random span (8 to length/3 tokens) appears again at a random later place;
    only the repeat is learnt, after its first token (nothing tells where a repeat starts). Nothing but
    the context predicts a repeated token, so the only way down the loss is to find the token after the
    earlier occurrence of the current one and copy it: an induction head, the circuit behind copying a
    name or an id from a prompt, which a model trained from scratch on a small budget of text does not
    form on its own."""
    ids = [rng.choice(vocabulary) for _ in range(length)]
    span = rng.randrange(8, length // 3)
    start = rng.randrange(0, length - 2 * span + 1)
    again = rng.randrange(start + span, length - span + 1)
    ids[again : again + span] = ids[start : start + span]
    labels = [IGNORE] * length
    labels[again + 1 : again + span] = ids[again + 1 : again + span]
    return Tokenized(f"copy-{start}-{again}-{span}", ids, labels)


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


def shard(batch: dict[str, Any], sp: int, sp_rank: int, pad_id: int) -> dict[str, Any]:
    """This rank's contiguous slice of a packed row for Ulysses sequence parallelism.

    The row is padded to a multiple of `sp` with a document of its own (positions from 0, no labels), so
    the padding attends to nothing real. `doc_lengths` stays the whole row's: attention runs on the whole
    sequence once DeepSpeed's all-to-all has gathered it (a slice of the heads on each rank).
    """
    import torch

    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    lengths = list(batch["doc_lengths"])
    pad = -ids.shape[1] % sp
    if pad:
        device = ids.device
        ids = torch.cat([ids, torch.full((1, pad), pad_id, dtype=ids.dtype, device=device)], dim=1)
        positions = torch.cat([positions, torch.arange(pad, device=device)[None]], dim=1)
        labels = torch.cat([labels, torch.full((pad,), IGNORE, dtype=labels.dtype, device=device)])
        lengths.append(pad)
    size = ids.shape[1] // sp
    part = slice(sp_rank * size, (sp_rank + 1) * size)
    return {
        "input_ids": ids[:, part],
        "position_ids": positions[:, part],
        "labels": labels[part],
        "doc_lengths": lengths,
    }


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
        mpu = None
        if config.sp > 1:
            mpu = self._sequence_parallel(model)
        if config.uses_deepspeed:
            from dr_train.distributed import deepspeed_config, require_deepspeed

            deepspeed = require_deepspeed()
            ds_config = deepspeed_config(
                config.zero,
                config.offload,
                config.deepspeed,
                self.micro_steps,
                self.dp_world,
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
                model=model, optimizer=optimizer, config=ds_config, mpu=mpu
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

    def _sequence_parallel(self, model: Any) -> Any:
        """Route attention through DeepSpeed's Ulysses wrapper; returns its process groups for the engine."""
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
        batch = row_tensors(row, self.device)
        if self.config.sp == 1:
            return batch
        return shard(batch, self.config.sp, self.sp_rank, self.module.config.pad_token_id or 0)

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
        return [self.data.rows[i] for i in chosen[self.dp_rank :: self.dp_world]]

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
        # DeepSpeed sums gradients over every rank and divides by the data-parallel ranks (sequence-parallel
        # ranks each hold part of one row's loss); the step's loss is a sum over all its learnt tokens
        scale = self.dp_world / normalizer
        model = self.engine if self.engine is not None else self.module
        for index, row in enumerate(rows):
            batch = self._batch(row)
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
            tokens += len(row) if self.sp_rank == 0 else 0
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

    def copy_warmup(self) -> dict[str, Any]:
        """Up to `copy_warmup` steps on copy drills, ending early once COPY_TARGET of a fixed held-out set
        of drills' repeated tokens are predicted right. A from-scratch model sits on a plateau for a while
        (the loss barely moves), then learns to copy within a couple of hundred steps.

        A step takes at least COPY_DOCS drills at a constant learning rate of at most COPY_LR (after a short
        ramp): on `tiny:qwen2-mini` in the main job, 32 drills a step at 2e-3 left the plateau after about
        1,900 steps, 21 at 3e-3 were still on it after 2,750."""
        config = self.config
        special = set(self.tokenizer.all_special_ids)
        vocabulary = [i for i in range(len(self.tokenizer)) if i not in special]
        per_row = max(1, config.max_len // COPY_DOC)
        # DeepSpeed counts its micro-steps: there, one row per micro-step
        rows_per_step = self.micro_steps
        if self.engine is None:
            rows_per_step = max(rows_per_step, math.ceil(COPY_DOCS / per_row))
            per_row = min(per_row, math.ceil(COPY_DOCS / rows_per_step))
        lr = min(config.lr, COPY_LR)
        held_out = [copy_drill(random.Random(config.seed * 7 + i), vocabulary) for i in range(32)]
        accuracy, loss, step = self._copy_accuracy(held_out), None, 0
        log = self.out / "copy_warmup.jsonl"
        if self.dist.main:
            log.unlink(missing_ok=True)
        for step in range(1, config.copy_warmup + 1):
            rng = random.Random((config.seed * 1_000_003 + step) * 1009 + self.dp_rank)
            rows = []
            for _ in range(rows_per_step):
                row = Row()
                for _ in range(per_row):
                    row.add(copy_drill(rng, vocabulary))
                rows.append(row)
            # every rank's rows hold the same number of learnt tokens in expectation; the step's count
            normalizer = int(self._reduce(sum(sum(1 for x in r.labels if x != IGNORE) for r in rows)))
            summed, _ = self._forward_backward(rows, normalizer)
            self._optimizer_step(lr * min(1.0, step / 50))
            loss = self._reduce(summed) / normalizer
            if step % 50 == 0 or step == config.copy_warmup:
                accuracy = self._copy_accuracy(held_out)
                if self.dist.main:
                    logger.info("copy warm-up step %d: loss %.3f, copies right %.3f", step, loss, accuracy)
                    record = {"step": step, "loss": round(loss, 4), "copy_accuracy": accuracy}
                    with log.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                if accuracy >= COPY_TARGET:
                    break
        if accuracy < COPY_TARGET:
            logger.warning(
                "copy warm-up: %d steps and %.0f%% of copies right (the aim is %.0f%%)",
                step,
                100 * accuracy,
                100 * COPY_TARGET,
            )
        return {"steps": step, "copy_accuracy": accuracy}

    def _copy_accuracy(self, drills: list[Tokenized]) -> float:
        """Share of the drills' learnt tokens the model predicts (greedily) from the tokens before them."""
        import torch

        model = self.module
        model.eval()
        with torch.no_grad():
            ids = torch.tensor([d.input_ids for d in drills], device=self.device)
            labels = torch.tensor([d.labels for d in drills], device=self.device)
            predicted = model(input_ids=ids).logits.argmax(-1)
            learnt = labels[:, 1:] != IGNORE
            right = int(((predicted[:, :-1] == labels[:, 1:]) & learnt).sum())
            total = int(learnt.sum())
        model.train()
        return round(self._reduce(right) / max(self._reduce(total), 1), 4)

    def run(self) -> Summary:
        from dr_core.log import progress

        config = self.config
        metrics_path = self.out / "metrics.jsonl"
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint.trim_metrics(metrics_path, self.step)
        warmup = None
        if config.copy_warmup and self.step == 0 and self.resume_from is None:
            warmup = self.copy_warmup()
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
            flops = self._reduce(
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
        self.save(None, summary=asdict(summary) | ({"copy_warmup": warmup} if warmup else {}))
        return summary

    def evaluate(self) -> float:
        import torch

        assert self.eval_data is not None
        model = self.module
        model.eval()
        total, count = 0.0, 0
        rows = self.eval_data.rows[self.dp_rank :: self.dp_world]
        with torch.no_grad():
            for row in rows:
                batch = self._batch(row)
                total += float(token_losses(model, batch, self.config.kernels, self.zero3))
                count += int((batch["labels"] != IGNORE).sum())
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
