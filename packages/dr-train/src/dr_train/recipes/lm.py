"""The language-model recipe behind `midtrain` and `sft`: records in, packed rows, a trained checkpoint out.

`run(config)` is the whole job as one process (one rank of several under torchrun): read and check the
records, pick the resume point, build the model and its tokenizer (one tokenizer for every rank), pack
the rows, then train with `Trainer`.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

from dr_core.errors import InputError
from dr_core.jsonl import OnError, RejectWriter
from dr_core.log import logger
from dr_core.options import OnErrorChoice
from dr_core.pipe import default_rejects_path
from dr_train import checkpoint, distributed
from dr_train.config import LMConfig, Precision
from dr_train.copy_warmup import run_copy_warmup
from dr_train.data import Item, build_dataset, item_texts, read_items
from dr_train.model import RopeSettings, build, is_checkpoint
from dr_train.recipes.common import rank_rejects, resolve_precision
from dr_train.tiny import CHAT_TEMPLATE, train_tokenizer
from dr_train.trainer import Summary, Trainer


def run(config: LMConfig) -> Summary | None:
    """Train as this process's rank; the summary (None when the run in `out` had already finished)."""
    sources = config.inputs or ["-"]
    dist = distributed.current()
    out = Path(config.out)
    finished, resume_from = checkpoint.resume_point(out, config.resume)
    precision = resolve_precision(config.precision)
    if config.sp < 1 or dist.world % config.sp:
        raise InputError(f"--sp {config.sp} must divide the number of processes ({dist.world})")
    if config.copy_warmup < 0:
        raise InputError(f"--copy-warmup {config.copy_warmup}: give a number of steps (0: none)")
    if config.copy_warmup and config.sp > 1:
        raise InputError("--copy-warmup runs without --sp (its drills are short rows): run it first, alone")
    settings = config.model_copy(
        update={
            "bf16": precision == Precision.bf16,
            "tokens_per_step": config.tokens_per_step or config.max_len * (dist.world // config.sp),
        }
    )
    if finished:
        checkpoint.refuse_changed_finished(out, settings.resume_keys())
        logger.info("%s already holds a finished run with these settings; nothing to resume", out)
        return None
    device = distributed.init(dist, settings.uses_deepspeed)
    on_error: OnError = "skip" if config.on_error == OnErrorChoice.skip else "fail"
    rejects_path = config.rejects or (
        default_rejects_path(sources, str(out / "train.jsonl")) if on_error == "skip" else None
    )
    rejects_path = rank_rejects(rejects_path, dist.main)
    with RejectWriter(rejects_path) if rejects_path else nullcontext() as rejects:
        items = read_items(sources, config.stage, on_error, rejects)
    spec = str(resume_from) if resume_from is not None else config.model
    tokenizer_spec = config.tokenizer
    if dist.world > 1 and not is_checkpoint(spec) and tokenizer_spec in (None, "train"):
        # one tokenizer for every rank: the first learns it, the others read it
        shared = out / "tokenizer.partial"
        if dist.main:
            texts = item_texts(items, CHAT_TEMPLATE)
            train_tokenizer(texts, vocab_size=config.vocab_size).save_pretrained(shared)
        distributed.barrier(dist)
        tokenizer_spec = str(shared)
    rope = RopeSettings(config.rope_theta, config.rope_scaling, config.max_positions)
    model, tokenizer = build(
        spec,
        tokenizer_spec,
        lambda: item_texts(items, CHAT_TEMPLATE),
        rope if resume_from is None else RopeSettings(),
        config.seed,
        vocab_size=config.vocab_size,
    )
    if tokenizer_spec is not None and tokenizer_spec.endswith("tokenizer.partial"):
        distributed.barrier(dist)  # every rank has read it
        if dist.main:
            shutil.rmtree(tokenizer_spec, ignore_errors=True)
    dataset = build_dataset(items, tokenizer, config.stage, config.max_len, config.long)
    eval_data = None
    if config.eval:
        eval_items = read_items(config.eval, config.stage)
        eval_data = build_dataset(eval_items, tokenizer, config.stage, config.max_len, "truncate")
    if resume_from is not None:
        state = checkpoint.read_state(resume_from)
        if state["data"] != dataset.fingerprint():
            raise InputError(f"--resume: the input is not the data {resume_from} was trained on")
        checkpoint.check_settings(
            resume_from,
            {**state["settings"], "ranks": state["world"]},
            {**settings.resume_keys(), "ranks": dist.world},
        )
    if dist.main:
        logger.info(
            "%s: %d rows of up to %d tokens (%d tokens, %d learnt) from %d records, in %s%s",
            config.stage,
            len(dataset.rows),
            config.max_len,
            dataset.tokens,
            dataset.label_tokens,
            dataset.stats.documents,
            precision,
            " (auto)" if config.precision == Precision.auto else "",
        )
    trainer = Trainer(model, tokenizer, dataset, settings, dist, device, eval_data, resume_from)
    before = {}
    if settings.copy_warmup and trainer.step == 0 and resume_from is None:
        # a fresh model from scratch learns to copy from its context first (copy_warmup.py)
        before["copy_warmup"] = run_copy_warmup(trainer)
    summary = trainer.run(before)
    if dist.main:
        record_prompts(out, items)
    return summary


def record_prompts(out: Path, items: list[Item]) -> None:
    """Write the prompt digests the examples were made with (`meta.prompt_digest`, as `dr data judge`
    sets it) into the trained model's folder, so a judge asked with another prompt warns."""
    import json

    from dr_core.files import write_atomic
    from dr_core.models import PROMPT_FILE

    digests = sorted(
        {
            str(d)
            for item in items
            if item.example is not None
            for d in [item.example.meta.get("prompt_digest")]
            if d
        }
    )
    if digests:
        body = {"prompt_digests": digests, "note": "the prompt versions this model was trained for"}
        write_atomic(out / PROMPT_FILE, json.dumps(body, indent=2).encode())
