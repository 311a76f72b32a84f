"""RL (GRPO or PPO) on research tasks, with rollouts through the real agent loop and its tools.

Tasks are Task JSONL, questions and report tasks mixed as given. The policy researches each task `group`
times; each run is rewarded (dr_train.rewards: the exact answer; a report's checklist score by the rules or
by a judge model, which the recipe can serve itself from a folder, `judge_serve`); the update trains only
on the tokens the policy sampled. With `nproc` N every rank holds the whole policy, runs a share of each
step's rollouts and of each minibatch, and DeepSpeed reduces the gradients (ZeRO-1/2 split the optimizer
state and gradients).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dr_agent.build import build_agent
from dr_core.errors import InputError
from dr_core.jsonl import OnError, RejectWriter, read_records
from dr_core.log import logger
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
from dr_train.rewards import Rewarder
from dr_train.rl import RLTrainer, engine_folder, frozen_copy
from dr_train.rollout import VLLMServers, write_engine_weights


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
        trainer = RLTrainer(
            policy,
            tokenizer,
            reference,
            agent,
            rewarder,
            tasks,
            settings,
            resume_from,
            reference_path=config.model,
            dist=dist,
            device=device,
            deepspeed=deepspeed,
            engines=engines,
            sync_tolerance=config.sync_tolerance,
            settings=config.resume_keys(),
        )
        return trainer.run()
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
# what an engine needs for --weight-sync nccl (dr_train.weight_sync)
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
