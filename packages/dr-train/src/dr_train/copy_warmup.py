"""Copy drills: a from-scratch model's first steps, which teach it to copy from its context.

A run with `--copy-warmup N` starts with up to N steps on random-token rows in which a span repeats, and
only the repeat is learnt; it ends once a held-out set of drills is copied right often enough.
"""

from __future__ import annotations

import json
import math
import random
from typing import TYPE_CHECKING, Any

import torch

from dr_core.log import logger
from dr_train import seeds
from dr_train.chat import IGNORE, Tokenized
from dr_train.pack import Row

if TYPE_CHECKING:
    from dr_train.trainer import Trainer

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


def run_copy_warmup(trainer: Trainer) -> dict[str, Any]:
    """Up to `copy_warmup` steps on copy drills, ending early once COPY_TARGET of a fixed held-out set
    of drills' repeated tokens are predicted right. A from-scratch model sits on a plateau for a while
    (the loss barely moves), then learns to copy within a couple of hundred steps.

    A step takes at least COPY_DOCS drills at a constant learning rate of at most COPY_LR (after a short
    ramp): on `tiny:qwen2-mini` in the main job, 32 drills a step at 2e-3 left the plateau after about
    1,900 steps, 21 at 3e-3 were still on it after 2,750."""
    config = trainer.config
    special = set(trainer.tokenizer.all_special_ids)
    vocabulary = [i for i in range(len(trainer.tokenizer)) if i not in special]
    per_row = max(1, config.max_len // COPY_DOC)
    # DeepSpeed counts its micro-steps: there, one row per micro-step
    rows_per_step = trainer.micro_steps
    if not trainer.backend.lockstep:
        rows_per_step = max(rows_per_step, math.ceil(COPY_DOCS / per_row))
        per_row = min(per_row, math.ceil(COPY_DOCS / rows_per_step))
    lr = min(config.lr, COPY_LR)
    held_out = [copy_drill(random.Random(seeds.copy_held_out(config.seed, i)), vocabulary) for i in range(32)]
    accuracy, loss, step = copy_accuracy(trainer, held_out), None, 0
    log = trainer.out / "copy_warmup.jsonl"
    if trainer.dist.main:
        trainer.out.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
    for step in range(1, config.copy_warmup + 1):
        rng = random.Random(seeds.copy_drill(config.seed, step, trainer.dp_rank))
        rows = []
        for _ in range(rows_per_step):
            row = Row()
            for _ in range(per_row):
                row.add(copy_drill(rng, vocabulary))
            rows.append(row)
        # every rank's rows hold the same number of learnt tokens in expectation; the step's count
        normalizer = int(trainer.reduce(sum(sum(1 for x in r.labels if x != IGNORE) for r in rows)))
        summed, _ = trainer.forward_backward(rows, normalizer)
        trainer.backend.step(lr * min(1.0, step / 50))
        loss = trainer.reduce(summed) / normalizer
        if step % 50 == 0 or step == config.copy_warmup:
            accuracy = copy_accuracy(trainer, held_out)
            if trainer.dist.main:
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


def copy_accuracy(trainer: Trainer, drills: list[Tokenized]) -> float:
    """Share of the drills' learnt tokens the model predicts (greedily) from the tokens before them."""
    model = trainer.module
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([d.input_ids for d in drills], device=trainer.device)
        labels = torch.tensor([d.labels for d in drills], device=trainer.device)
        predicted = model(input_ids=ids).logits.argmax(-1)
        learnt = labels[:, 1:] != IGNORE
        right = int(((predicted[:, :-1] == labels[:, 1:]) & learnt).sum())
        total = int(learnt.sum())
    model.train()
    return round(trainer.reduce(right) / max(trainer.reduce(total), 1), 4)
