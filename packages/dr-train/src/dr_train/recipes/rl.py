"""RL (GRPO or PPO) on research tasks, with rollouts through the real agent loop and its tools.

Tasks are Task JSONL, questions and report tasks mixed as given. The policy researches each task `group`
times; each run is rewarded (dr_train.rl.rewards: the exact answer; a report's checklist score by the rules or
by a judge model, which the recipe can serve itself from a folder, `judge_serve`); the update trains only
on the tokens the policy sampled. With `nproc` N every rank holds the whole policy, runs a share of each
step's rollouts and of each minibatch, and DeepSpeed reduces the gradients (ZeRO-1/2 split the optimizer
state and gradients).

This file is the one to read: `run` sets the run up (tasks, rewarder, engines, models, agent) and `RLRun`
is the loop, over dr_train.rl's components: `Rollouts` (a step's rewarded runs), `PolicyUpdate` (the
update), `Sampler` (where the policy samples, and the engines' weight sync).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dr_agent.build import build_agent
from dr_core.errors import InputError
from dr_core.jsonl import OnError, RejectWriter, read_records
from dr_core.log import logger, progress
from dr_core.pipe import default_rejects_path
from dr_core.records import Task
from dr_core.server import ManagedServer
from dr_core.serving import fallback_reason, model_config
from dr_judge.build import make_judge
from dr_train import checkpoint, distributed
from dr_train.backend import DeepSpeedSettings
from dr_train.config import RLConfig, RLRecipeConfig
from dr_train.model import RopeSettings, build, is_checkpoint
from dr_train.recipes.common import rank_rejects
from dr_train.rl.engines import VLLMServers, write_engine_weights
from dr_train.rl.rewards import Rewarder, reward_metrics
from dr_train.rl.rollouts import Collected, Rollouts
from dr_train.rl.sampling import Sampler, engine_folder
from dr_train.rl.stream import RolloutStream
from dr_train.rl.update import PolicyUpdate, frozen_copy


def run(config: RLRecipeConfig) -> dict[str, Any] | None:
    """Train as this process's rank; the summary (None when the run in `out` had already finished)."""
    if config.group < 2 and config.algo == "grpo":
        raise InputError("--group: GRPO compares samples of the same task, so it needs at least 2")
    if not config.model or not is_checkpoint(config.model):
        raise InputError(
            f"--model {config.model!r}: give the Hugging Face folder of the policy "
            "(e.g. dr train sft's --out)"
        )
    if config.zero is not None and config.zero not in (0, 1, 2):
        raise InputError(
            f"--zero {config.zero}: RL generates with the whole policy on every rank; choose 0, 1 or 2"
        )
    sources = config.inputs or ["-"]
    out = Path(config.out)
    dist = distributed.current()
    finished, resume_from = checkpoint.resume_point(out, config.resume)
    if finished:
        checkpoint.refuse_changed_finished(out, config.resume_keys())
        logger.info("%s already holds a finished run with these settings; nothing to resume", out)
        return None
    rejects_path = config.rejects or (
        default_rejects_path(sources, str(out / "tasks.jsonl")) if config.on_error.value == "skip" else None
    )
    rejects_path = rank_rejects(rejects_path, dist.main)
    deepspeed = DeepSpeedSettings(config.zero, False, config.deepspeed)
    device = distributed.init(dist, deepspeed.wanted)
    with RejectWriter(rejects_path) if rejects_path else nullcontext() as writer:
        on_error: OnError = "skip" if writer is not None else "fail"
        tasks = list(read_records(sources, Task, on_error=on_error, rejects=writer))
    if not tasks:
        raise InputError("no tasks to train on")
    if config.judge_serve and (config.judge_base_url or config.judge_model):
        raise InputError("--judge-serve serves a judge here: drop --judge-base-url/--judge-model, or it")
    if config.judge_serve and not is_checkpoint(config.judge_serve):
        raise InputError(f"--judge-serve {config.judge_serve!r}: give a judge model's Hugging Face folder")
    if config.weight_sync == "nccl" and not cuda_available():
        raise InputError(
            "--weight-sync nccl: NCCL moves the weights from GPU to GPU, and this machine has no CUDA "
            "device; use --weight-sync disk (the default: each engine reloads the policy from a folder)"
        )
    if config.judge_serve and dist.world > 1:
        raise InputError(
            "with --nproc, every rank asks the judge: serve it (dr serve) and give --judge-base-url"
        )
    rewarder = None
    if not config.judge_serve:  # a judge to serve is checked once it answers
        rewarder = rewarder_for(config, tasks, config.judge_base_url, config.judge_model)
    start = str(resume_from) if resume_from is not None else config.model
    plan = rollout_engines(config, start, dist.world)  # before the models load: a bad URL fails fast
    engines = plan if isinstance(plan, VLLMServers) else None
    judge_server = None
    try:
        if config.judge_serve:
            judge_server = serve_judge(config.judge_serve, Path(config.out) / "judge-engine.log")
            rewarder = rewarder_for(config, tasks, judge_server.url + "/v1", config.judge_serve)
        assert rewarder is not None
        policy, tokenizer = build(start, None, list, RopeSettings(), config.seed)
        if plan == LOCAL:
            # one engine here, started from the policy as the sync writes it; the trainer holds the policy
            # in float32 (dr_train.model.build), so the engine does too and their numbers agree
            folder = write_engine_weights(policy, tokenizer, engine_folder(Path(config.out)))
            log = Path(config.out) / "rollout-engine.log"
            extra = ENGINE_FLAGS if config.weight_sync == "nccl" else []
            engines = VLLMServers.start_local(str(folder), log, dtype="float32", extra=extra)
        reference = None
        if config.kl_coef:  # the starting policy; a resumed run reads it again from --model
            reference = frozen_copy(
                policy
                if resume_from is None
                else build(config.model, None, list, RopeSettings(), config.seed)[0]
            )
        agent = build_agent(
            search={"backend": config.search, "index": config.index},
            agent={
                "max_steps": config.max_steps,
                "max_tokens": config.max_tokens,
                "max_output_tokens": config.max_output_tokens,
            },
            web=False,
        )
        settings = RLConfig.model_validate(config.model_dump(include=set(RLConfig.model_fields)))
        if config.kernels:
            from dr_kernels import patch

            patch(policy)
            if reference is not None:
                patch(reference)
        policy.config.use_cache = True
        sampler = Sampler(policy, tokenizer, settings, dist, engines, config.sync_tolerance)
        agent.llm = sampler.policy
        run = RLRun(
            settings,
            rollouts=Rollouts(agent, rewarder, tasks, settings, dist, local=sampler.local),
            update=PolicyUpdate(policy, reference, settings, dist, device, deepspeed),
            sampler=sampler,
            tokenizer=tokenizer,
            dist=dist,
            reference_path=config.model,
            resume_keys=config.resume_keys(),
        )
        if resume_from is not None:
            run.load(resume_from)
        return run.train()
    finally:
        if engines is not None:
            engines.close()
        if judge_server is not None:
            judge_server.stop()


def rewarder_for(
    config: RLRecipeConfig, tasks: list[Task], base_url: str | None, model: str | None
) -> Rewarder:
    """The run's Rewarder over the judge at `base_url` (or the [judge.llm] settings); InputError when it
    cannot reward every task."""
    judge = make_judge(base_url, model, at_once=config.judge_concurrency, mode=config.reward_mode)
    try:
        rewarder = Rewarder(judge, config.reward, config.reward_mode, config.judge_concurrency)
        rewarder.check(tasks)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return rewarder


def serve_judge(folder: str, log: Path) -> ManagedServer:
    """Serve the judge model in `folder` for the run (dr_core.serving.managed); returns once it answers."""
    from dr_core.serving import managed

    server, _ = managed(folder, log=log, what="the judge server")
    logger.info("serving the judge %s (log: %s)", folder, log)
    return server.__enter__()


LOCAL = "local"  # a vLLM engine to start here, once the policy is loaded
# what an engine needs for --weight-sync nccl (dr_train.rl.weight_sync)
ENGINE_FLAGS = ["--weight-transfer-config", '{"backend": "nccl"}']


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def rollout_engines(config: RLRecipeConfig, policy_dir: str, world: int) -> VLLMServers | str | None:
    """The vLLM engines the policy samples in: those at --rollout-url (checked), LOCAL (one to start
    here), or None (generate in this process)."""
    engine = config.engine
    why: str | None = None
    if engine == "auto":
        why = fallback_reason(model_config(policy_dir))
        if why is None and world > 1 and not config.rollout_url:
            why = "several ranks sample in engines given by --rollout-url, and none was"
        engine = "hf" if why is not None and not config.rollout_url else "vllm"
        if engine == "hf":
            logger.info("rollouts: Hugging Face generate in this process (%s)", why)
        else:
            logger.info("rollouts: vLLM")
    if engine == "hf":
        if config.weight_sync == "nccl":
            raise InputError(
                "--weight-sync nccl sends the weights into vLLM engines; with --engine hf the policy samples "
                "in the process that trains it: drop --weight-sync, or use --engine vllm"
            )
        if config.rollout_url:
            raise InputError("--rollout-url names vLLM engines: drop it, or use --engine vllm")
        if config.max_staleness:
            how = "--engine hf" if config.engine == "hf" else f"rollouts fall back to --engine hf ({why})"
            raise InputError(
                f"--max-staleness {config.max_staleness}: with {how} the policy samples in the process that "
                "trains it, so sampling cannot go on during the update; asynchronous RL samples in vLLM "
                "engines (--engine vllm), or use --max-staleness 0"
            )
        return None
    if config.rollout_url:
        engines = VLLMServers(config.rollout_url)
        engines.check()
        return engines
    why = fallback_reason(model_config(policy_dir))
    if why is not None:
        raise InputError(f"--engine vllm cannot start an engine for {policy_dir} here: {why}")
    if world > 1:
        raise InputError("with --nproc, give the vLLM engines every rank samples in: --rollout-url URL")
    # the trainer holds the policy in float32 (dr_train.model.build): the engine too, so their numbers agree
    return LOCAL


# what a dr that did not yet record a setting in its checkpoints did, for resuming their runs
UNRECORDED: dict[str, Any] = {
    "skip_flat_groups": False,
    "reward": "auto",
    "reward_mode": "strict",
    "max_staleness": 0,
    "sync_pause": "abort",
}


@dataclass
class RLRun:
    """The loop: each step's rollouts (sampled now, or taken from the asynchronous stream), the update, the
    engines' sync; a metrics record per step, checkpoints, and resume."""

    config: RLConfig
    _: KW_ONLY
    rollouts: Rollouts
    update: PolicyUpdate
    sampler: Sampler
    tokenizer: Any
    dist: distributed.Dist
    reference_path: str | None
    resume_keys: dict[str, Any]  # the settings a resume must match
    step: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.config.out)

    def train(self) -> dict[str, Any]:
        main = self.dist.main
        metrics = checkpoint.MetricLog(self.out / "metrics.jsonl", main)
        metrics.resume(self.step)
        record: dict[str, Any] = {}
        steps = range(self.step, self.config.steps)
        engines = not self.sampler.local
        if engines and len(steps):
            self.sampler.sync(self.step)  # whatever they held: from now on, the trainer's weights
        # asynchronous: sampling goes on during the update, on the first rank
        stream = (
            self.rollouts.stream(self.step) if self.config.max_staleness and main and len(steps) else None
        )
        try:
            for step in progress(steps, f"rl ({self.config.algo})", total=len(steps)):
                record = self.one_step(step, stream)
                if main:
                    metrics.write(record)
                    self.log(record)
                if (
                    self.config.save_every
                    and self.step % self.config.save_every == 0
                    and self.step < self.config.steps
                ):
                    self.save(f"checkpoint-{self.step}")
        finally:
            if stream is not None:
                self.sampler.stop()  # the rollouts still sampling are abandoned
                stream.close()
        self.save(None)
        return {"out": str(self.out), "steps": self.step, **{k: v for k, v in record.items() if k != "step"}}

    def one_step(self, step: int, stream: RolloutStream | None) -> dict[str, Any]:
        """One step and its metrics record."""
        started = time.perf_counter()
        idle = self.sampler.idle_s()
        got: Collected
        if self.config.max_staleness:
            got = self.rollouts.taken(stream, step)
        else:
            self.update.model.eval()
            got = self.rollouts.collect(step)
        rollouts = got.rollouts
        updating = time.perf_counter()
        prepared = self.update.prepare(rollouts)
        sequences = prepared.sequences
        stats = self.update.train(sequences, step) if sequences else {}
        update_s = time.perf_counter() - updating
        kept = [r.reward for r in rollouts if r.reward is not None]
        rewards = torch.tensor(kept, dtype=torch.float64)
        scored = [r.scored for r in rollouts if r.scored is not None]
        self.step = step + 1
        synced = {}
        if not self.sampler.local and self.step < self.config.steps:
            synced = self.sampler.sync(self.step)
            if stream is not None:
                stream.advance(self.step)
        timing = {"update_s": round(update_s, 2)}
        if not self.sampler.local:
            timing["engine_idle_s"] = round(self.sampler.idle_s() - idle, 2)
        return {
            "step": self.step,
            # over the rollouts with a reward (None when the judge abstained on all of them)
            "reward_mean": round(float(rewards.mean()), 4) if kept else None,
            "reward_std": round(float(rewards.std(unbiased=False)), 4) if kept else None,
            "solved": round(float((rewards >= 0.5).float().mean()), 4) if kept else None,
            "response_tokens": round(
                sum(len(t.response) for r in rollouts for t in r.turns) / len(rollouts), 1
            ),
            "tool_calls": round(sum(r.tool_calls for r in rollouts) / len(rollouts), 2),
            "rollouts": len(rollouts),
            # rollouts without a reward (the judge abstained), left out of their groups
            "dropped": len(rollouts) - len(kept),
            **reward_metrics(scored, self.rollouts.rewarder.source == "judge"),
            "trained_tokens": sum(s.actions for s in sequences),
            "flat_groups": prepared.flat_groups,
            **got.staleness,
            **{k: round(v, 6) for k, v in stats.items()},
            **{k: round(v, 6) for k, v in prepared.gap.items()},
            **{k: round(v, 6) for k, v in synced.items()},
            "rollout_s": round(got.rollout_s, 2),
            "judge_s": round(got.judge_s, 3),  # to the millisecond: a judge on loopback answers in a few
            **timing,
            "step_s": round(time.perf_counter() - started, 2),
        }

    def log(self, record: dict[str, Any]) -> None:
        logger.info(
            "rl step %d/%d reward %s, %.1f tool calls, kl %.4f%s%s",
            record["step"],
            self.config.steps,
            "none (the judge abstained on every rollout)"
            if record["reward_mean"] is None
            else f"{record['reward_mean']:.3f} ± {record['reward_std']:.3f}",
            record["tool_calls"],
            record.get("kl", 0.0),
            f", judge {record['reward_judge']:.3f} vs true {record['reward_true']:.3f}"
            if "reward_judge" in record and "reward_true" in record
            else "",
            f", staleness {record['staleness']}, {record['stale_groups']} stale groups dropped"
            if "staleness" in record
            else "",
        )

    def save(self, name: str | None) -> None:
        """`OUT/NAME` (or the final model into `OUT`): the policy as a Hugging Face folder, its tokenizer,
        the optimizer (DeepSpeed's sharded state on several ranks), the value head, RNG and state."""
        value_head = self.update.value_head

        def extra(folder: Path) -> None:
            if value_head is not None:
                torch.save(value_head.state_dict(), folder / "value_head.pt")

        state = {
            "stage": "rl",
            "algo": self.config.algo,
            "step": self.step,
            "total_steps": self.config.steps,
            "reference": self.reference_path,
            "world": self.dist.world,
            "deepspeed": self.update.backend.sharded,
            "settings": self.resume_keys,
        }
        checkpoint.save_run(
            self.out,
            name,
            dist=self.dist,
            backend=self.update.backend,
            module=self.update.model,
            tokenizer=self.tokenizer,
            state=state,
            keep=self.config.keep,
            extra=extra,
        )

    def load(self, folder: Path) -> None:
        backend = self.update.backend
        state = checkpoint.read_state(folder)
        sharded = bool(state.get("deepspeed"))
        if sharded != backend.sharded or (sharded and state.get("world", 1) != self.dist.world):
            ran = f"DeepSpeed on {state.get('world', 1)} ranks" if sharded else "without DeepSpeed"
            now = f"DeepSpeed on {self.dist.world} ranks" if backend.sharded else "without DeepSpeed"
            raise InputError(f"--resume: {folder} was trained {ran}; this run asks for {now}")
        checkpoint.check_settings(folder, state.get("settings", {}), self.resume_keys, before=UNRECORDED)
        self.step = state["step"]
        backend.load(folder)
        if self.update.value_head is not None and not backend.sharded:
            self.update.value_head.load_state_dict(torch.load(folder / "value_head.pt", weights_only=True))
        checkpoint.set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        logger.info("resumed RL from %s at step %d", folder, self.step)
