"""`dr train rl`: GRPO or PPO on research tasks, with rollouts through the real agent loop and tools.

One step: pick tasks, let the policy research each `group` times (the agent's search/open/answer tools over
the index, under its step and token budgets), reward each run with dr-judge (exact answer for deep-search
tasks, checklist score otherwise), then update on the tokens the policy sampled; prompts and tool results
are context, never trained on. The policy's log-probabilities come from dr_kernels' fused head (no logits).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dr_core.concurrency import ordered_map
from dr_core.log import logger, progress
from dr_core.records import Task, Trajectory
from dr_train import checkpoint
from dr_train.chat import IGNORE
from dr_train.policy import LocalPolicy, Recording, record_turns
from dr_train.rl_math import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    kl_k3,
    ppo_token_rewards,
)

Algo = Literal["grpo", "ppo"]


@dataclass
class RLConfig:
    out: Path
    algo: Algo = "grpo"
    steps: int = 10
    tasks_per_step: int = 8
    group: int = 4
    lr: float = 1e-5
    weight_decay: float = 0.0
    clip: float = 0.2
    value_clip: float = 0.2
    kl_coef: float = 0.01
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 1.0
    epochs: int = 1
    minibatch: int = 8
    # how a minibatch's token losses are averaged: "rollout" gives every rollout the same weight (the mean
    # over its own tokens, as GRPO does), "token" gives every token the same weight, so long rollouts
    # count for more
    loss_norm: Literal["rollout", "token"] = "rollout"
    grad_clip: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    concurrency: int = 2
    save_every: int = 0
    keep: int = 2
    seed: int = 0
    kernels: bool = True


@dataclass
class Rollout:
    task: Task
    trajectory: Trajectory
    reward: float
    turns: list[Any]

    @property
    def tool_calls(self) -> int:
        return sum(len(m.tool_calls) for m in self.trajectory.messages if m.role == "assistant")


@dataclass
class Sequence:
    """One forward pass of a rollout: tokens, and the sampled ones to train on (aligned to predictions)."""

    rollout: int
    input_ids: list[int]
    targets: list[int]  # targets[j] is input_ids[j + 1] where that token was sampled, IGNORE elsewhere
    old_logprobs: Any = None
    ref_logprobs: Any = None
    old_values: Any = None
    advantages: Any = None
    returns: Any = None

    @property
    def actions(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)


def sequences_of(turns: list[Any], rollout: int) -> list[Sequence]:
    """The rollout's turns as few forward passes as possible: a turn whose prompt continues the previous
    turn's prompt and sample token for token extends it; otherwise (the agent compacted or rewrote the
    history) it starts a new one."""
    out: list[Sequence] = []
    for turn in turns:
        if not turn.response:
            continue
        current = out[-1] if out else None
        if current is not None and turn.prompt[: len(current.input_ids)] == current.input_ids:
            context = turn.prompt[len(current.input_ids) :]
            start = len(current.input_ids)
            current.input_ids += context + turn.response
        else:
            current = Sequence(rollout, list(turn.prompt) + list(turn.response), [])
            out.append(current)
            start = 0
            context = turn.prompt
        targets = current.targets
        # the prediction at position j is of token j + 1: the sampled tokens are predicted from the
        # position before each of them
        first = start + len(context)
        targets += [IGNORE] * (len(current.input_ids) - 1 - len(targets))
        for j in range(first - 1, len(current.input_ids) - 1):
            targets[j] = current.input_ids[j + 1]
    for seq in out:
        seq.targets += [IGNORE] * (len(seq.input_ids) - len(seq.targets))
    return out


class ValueHead:
    """PPO's critic: a linear read-out of the policy's last hidden state (the trunk is shared)."""

    @staticmethod
    def build(hidden: int) -> Any:
        import torch

        head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return head


def forward(model: Any, seq: Sequence, kernels: bool, value_head: Any = None) -> tuple[Any, Any]:
    """(log-probabilities, values) at the sampled tokens of `seq`, differentiable."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([seq.input_ids], device=device)
    positions = torch.arange(len(seq.input_ids), device=device)[None]
    hidden = model.model(input_ids=ids, position_ids=positions).last_hidden_state[0]
    targets = torch.tensor(seq.targets, device=device)
    mask = targets != IGNORE
    head = model.lm_head
    if kernels:
        from dr_kernels import label_logprobs

        logprobs = label_logprobs(hidden[mask], head.weight, targets[mask], bias=head.bias)
    else:
        logits = head(hidden[mask]).float()
        logprobs = torch.log_softmax(logits, -1).gather(-1, targets[mask][:, None])[:, 0]
    values = None
    if value_head is not None:
        values = value_head(hidden[mask].float()).squeeze(-1)
    return logprobs, values


class RLTrainer:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        reference: Any,
        agent: Any,
        judge: Any,
        tasks: list[Task],
        config: RLConfig,
        resume_from: Path | None = None,
        reference_path: str | None = None,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.reference = reference
        self.agent = agent
        self.judge = judge
        self.tasks = tasks
        self.config = config
        self.out = Path(config.out)
        self.reference_path = reference_path
        self.step = 0
        if config.kernels:
            from dr_kernels import patch

            patch(model)
            if reference is not None:
                patch(reference)
        model.config.use_cache = True
        # rollouts and updates on one device: the GPU when there is one
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(self.device)
        if reference is not None:
            reference.to(self.device)
        self.value_head = ValueHead.build(model.config.hidden_size) if config.algo == "ppo" else None
        if self.value_head is not None:
            self.value_head.to(self.device)
        params = list(model.parameters()) + (list(self.value_head.parameters()) if self.value_head else [])
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.policy = LocalPolicy(model, tokenizer)
        agent.llm = self.policy
        if resume_from is not None:
            self._load(resume_from)

    # ---- rollouts ----------------------------------------------------------------------------------

    def step_tasks(self, step: int) -> list[Task]:
        rng = random.Random(self.config.seed * 1_000_003 + step)
        count = min(self.config.tasks_per_step, len(self.tasks))
        return rng.sample(self.tasks, count)

    def _rollout(self, task: Task) -> Rollout:
        recording = Recording()
        with record_turns(recording):
            trajectory = self.agent.run(
                task.question, task_id=task.id, temperature=self.config.temperature, top_p=self.config.top_p
            )
        reward = self.judge.reward(task, trajectory.final, trajectory.citations)
        return Rollout(task, trajectory, float(reward), recording.turns)

    def rollouts(self, step: int) -> list[Rollout]:
        import torch

        torch.manual_seed(self.config.seed * 7919 + step)
        self.model.eval()
        jobs = [task for task in self.step_tasks(step) for _ in range(self.config.group)]
        return list(ordered_map(self._rollout, jobs, self.config.concurrency))

    # ---- update ------------------------------------------------------------------------------------

    def _prepare(self, rollouts: list[Rollout]) -> list[Sequence]:
        import torch

        config = self.config
        sequences = [s for i, r in enumerate(rollouts) for s in sequences_of(r.turns, i)]
        sequences = [s for s in sequences if s.actions]
        with torch.no_grad():
            for seq in sequences:
                seq.old_logprobs, seq.old_values = forward(self.model, seq, config.kernels, self.value_head)
                if self.reference is not None and config.kl_coef:
                    seq.ref_logprobs, _ = forward(self.reference, seq, config.kernels)
        rewards = torch.tensor([r.reward for r in rollouts])
        if config.algo == "grpo":
            advantages = group_advantages(rewards, config.group)
            for seq in sequences:
                seq.advantages = torch.full_like(seq.old_logprobs, float(advantages[seq.rollout]))
            return sequences
        for index, rollout in enumerate(rollouts):
            mine = [s for s in sequences if s.rollout == index]
            if not mine:
                continue
            logprobs = torch.cat([s.old_logprobs for s in mine])
            ref = torch.cat([s.ref_logprobs for s in mine]) if mine[0].ref_logprobs is not None else None
            values = torch.cat([s.old_values for s in mine])
            token_rewards = ppo_token_rewards(rollout.reward, logprobs, ref, config.kl_coef)
            adv, returns = gae(token_rewards, values, config.gamma, config.lam)
            offset = 0
            for seq in mine:
                n = seq.old_logprobs.numel()
                seq.advantages, seq.returns = adv[offset : offset + n], returns[offset : offset + n]
                offset += n
        all_adv = torch.cat([s.advantages for s in sequences]) if sequences else torch.zeros(1)
        mean, std = all_adv.mean(), all_adv.std(unbiased=False)
        for seq in sequences:
            seq.advantages = (seq.advantages - mean) / (std + 1e-6)  # whitened, as PPO for LMs does
        return sequences

    def update(self, sequences: list[Sequence]) -> dict[str, float]:
        import torch

        config = self.config
        self.model.train()
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        counted = 0
        rng = random.Random(config.seed * 31 + self.step)
        rollout_tokens: dict[int, int] = {}
        for seq in sequences:
            rollout_tokens[seq.rollout] = rollout_tokens.get(seq.rollout, 0) + seq.actions
        for _ in range(config.epochs):
            order = list(sequences)
            rng.shuffle(order)
            for start in range(0, len(order), config.minibatch):
                batch = order[start : start + config.minibatch]
                tokens = sum(s.actions for s in batch)
                rollouts = len({s.rollout for s in batch})
                for seq in batch:
                    if config.loss_norm == "token":
                        weight = 1 / tokens
                    else:
                        weight = 1 / (rollout_tokens[seq.rollout] * rollouts)
                    logprobs, values = forward(self.model, seq, config.kernels, self.value_head)
                    pg, clipped = clipped_policy_loss(logprobs, seq.old_logprobs, seq.advantages, config.clip)
                    loss = pg.sum()
                    if seq.ref_logprobs is not None:
                        kl = kl_k3(logprobs, seq.ref_logprobs)
                        if config.algo == "grpo":
                            loss = loss + config.kl_coef * kl.sum()
                        stats["kl"] += float(kl.detach().sum())
                    if values is not None:
                        vl = clipped_value_loss(values, seq.old_values, seq.returns, config.value_clip)
                        loss = loss + config.vf_coef * vl.sum()
                        stats["value_loss"] += float(vl.detach().sum())
                    (loss * weight).backward()
                    stats["policy_loss"] += float(pg.detach().sum())
                    stats["clip_fraction"] += float(clipped.float().sum())
                    counted += seq.actions
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return {k: v / max(counted, 1) for k, v in stats.items()}

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import torch

        metrics_path = self.out / "metrics.jsonl"
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint.trim_metrics(metrics_path, self.step)
        record: dict[str, Any] = {}
        steps = range(self.step, self.config.steps)
        for step in progress(steps, f"rl ({self.config.algo})", total=len(steps)):
            started = time.perf_counter()
            rollouts = self.rollouts(step)
            rollout_s = time.perf_counter() - started
            sequences = self._prepare(rollouts)
            stats = self.update(sequences) if sequences else {}
            rewards = torch.tensor([r.reward for r in rollouts])
            self.step = step + 1
            record = {
                "step": self.step,
                "reward_mean": round(float(rewards.mean()), 4),
                "reward_std": round(float(rewards.std(unbiased=False)), 4),
                "solved": round(float((rewards >= 0.5).float().mean()), 4),
                "response_tokens": round(
                    sum(len(t.response) for r in rollouts for t in r.turns) / len(rollouts), 1
                ),
                "tool_calls": round(sum(r.tool_calls for r in rollouts) / len(rollouts), 2),
                "rollouts": len(rollouts),
                "trained_tokens": sum(s.actions for s in sequences),
                **{k: round(v, 6) for k, v in stats.items()},
                "rollout_s": round(rollout_s, 2),
                "step_s": round(time.perf_counter() - started, 2),
            }
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            logger.info(
                "rl step %d/%d reward %.3f ± %.3f, %.1f tool calls, kl %.4f",
                self.step,
                self.config.steps,
                record["reward_mean"],
                record["reward_std"],
                record["tool_calls"],
                record.get("kl", 0.0),
            )
            if (
                self.config.save_every
                and self.step % self.config.save_every == 0
                and self.step < self.config.steps
            ):
                self.save(f"checkpoint-{self.step}")
        self.save(None)
        return {"out": str(self.out), "steps": self.step, **{k: v for k, v in record.items() if k != "step"}}

    # ---- checkpoints -------------------------------------------------------------------------------

    def save(self, name: str | None) -> None:
        import torch

        folder = checkpoint.staging(self.out, name or "final")
        checkpoint.save_model(self.model, folder)
        self.tokenizer.save_pretrained(folder)
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(checkpoint.rng_state(), folder / "rng.pt")
        if self.value_head is not None:
            torch.save(self.value_head.state_dict(), folder / "value_head.pt")
        checkpoint.write_state(
            folder,
            {
                "stage": "rl",
                "algo": self.config.algo,
                "step": self.step,
                "total_steps": self.config.steps,
                "reference": self.reference_path,
                "done": name is None,
            },
        )
        checkpoint.publish(folder, self.out, name, self.config.keep)

    def _load(self, folder: Path) -> None:
        import torch

        state = checkpoint.read_state(folder)
        self.step = state["step"]
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
        if self.value_head is not None:
            self.value_head.load_state_dict(torch.load(folder / "value_head.pt", weights_only=True))
        checkpoint.set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        logger.info("resumed RL from %s at step %d", folder, self.step)


def frozen_copy(model: Any) -> Any:
    reference = copy.deepcopy(model)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference
