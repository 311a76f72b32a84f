"""Every setting of `dr train`'s recipes, declared once: type, default and help on the field.

The `dr train` commands build their flags from these models (`dr_core.config_cli`), the config file's
`[train.<recipe>]` sections and DR_TRAIN_<RECIPE>_* variables fill the same fields, and the recipes read
them. Torch-free, so that `dr train --help` and the config file's checks load no model code.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dr_core.flags import flag, not_a_flag
from dr_core.options import OnErrorChoice
from dr_core.server import server_root

Stage = Literal["midtrain", "sft"]
LongPolicy = Literal["drop", "truncate", "split", "error"]
Algo = Literal["grpo", "ppo"]
RewardSource = Literal["auto", "rules", "judge"]
RewardMode = Literal["strict", "graded"]


class Precision(StrEnum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


def _settings_of(config: BaseModel, free: frozenset[str]) -> dict[str, Any]:
    from dr_train import checkpoint

    return checkpoint.settings_of(config, free)


class RunSettings(BaseModel):
    """How a recipe runs as a process: what it reads, on how many ranks, and where bad lines go."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_enum_values=False)

    inputs: list[str] = Field(
        default_factory=lambda: ["-"], description="Input JSONL files (.gz/.zst ok); '-' reads stdin."
    )
    nproc: int = Field(1, ge=1, description="Processes on this machine (relaunches under torchrun).")
    resume: bool = Field(False, description="Continue from the newest checkpoint in --out.")
    on_error: OnErrorChoice = Field(
        OnErrorChoice.fail,
        description="fail: stop at the first bad line (exit 2). skip: keep going, bad lines go to the "
        "rejects file.",
    )
    rejects: str | None = Field(
        None, description="Where --on-error skip keeps bad lines (default: beside the output)."
    )

    # none of these changes a run's result (the data and the ranks are compared on resume apart)
    RUN_FREE: ClassVar[frozenset[str]] = frozenset({"inputs", "nproc", "resume", "on_error", "rejects"})


class TrainConfig(BaseModel):
    """The language-model trainer's settings, resolved (the recipes turn flags and config files into one)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    stage: str = Field(json_schema_extra=not_a_flag())
    out: Path = Field(
        description="Checkpoint folder: checkpoint-N/ inside, final model at the top.",
        json_schema_extra=flag(short="-o"),
    )
    max_len: int = Field(32768, description="Tokens per packed row (e.g. 32768, then 131072).")
    tokens_per_step: int | None = Field(
        None, description="Tokens per optimizer step, all ranks (default: one row per rank)."
    )
    lr: float = Field(1e-5, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, description="Final learning rate as a share of --lr.")
    warmup_steps: int = Field(
        0, description="Linear warm-up steps (cosine decay after).", json_schema_extra=flag("--warmup")
    )
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's betas.")
    clip: float = Field(1.0, description="Gradient-norm clipping.")
    epochs: float = Field(1.0, description="Passes over the data.")
    max_steps: int | None = Field(None, description="Stop after this many steps (overrides --epochs).")
    save_every: int = Field(0, description="Checkpoint every N steps (0: only the final model).")
    keep: int = Field(2, description="How many step checkpoints to keep.")
    eval_every: int = Field(0, description="Eval every N steps (and at the end).")
    seed: int = Field(0, description="Seed of the data order, initialization and sampling.")
    # decided by the recipe from `precision` (bf16 autocast over fp32 weights or not); recorded, so that a
    # resumed run compares what the precision resolved to
    bf16: bool = Field(False, json_schema_extra=not_a_flag())
    kernels: bool = Field(True, description="dr_kernels' fused loss and packed attention (off: plain HF).")
    grad_ckpt: bool = Field(True, description="Gradient checkpointing.")
    offload_activations: bool = Field(False, description="Keep saved activations in CPU memory.")
    zero: int | None = Field(None, description="DeepSpeed ZeRO stage preset: 0, 1, 2 or 3.")
    offload: bool = Field(False, description="ZeRO-Offload: optimizer (and ZeRO-3 parameters) on CPU.")
    deepspeed: str | None = Field(None, description="A DeepSpeed JSON config, passed through.")
    sp: int = Field(
        1,
        description="Ulysses sequence parallelism (DeepSpeed): N ranks share each row, each holding 1/N of "
        "its tokens and attending with 1/N of the heads. Divides --nproc.",
    )
    log_every: int = Field(1, description="Write a metrics record every N steps.")
    copy_warmup: int = Field(
        0,
        description="For a model trained from scratch: up to N steps of copy drills first (random tokens "
        "with a repeated span), ending once 95%% of the repeats are predicted; teaches it to copy from its "
        "context (names, ids), which a small text budget does not. Log in OUT/copy_warmup.jsonl.",
    )

    @property
    def uses_deepspeed(self) -> bool:
        return self.deepspeed_settings.wanted

    @property
    def deepspeed_settings(self) -> Any:
        from dr_train.backend import DeepSpeedSettings

        return DeepSpeedSettings(self.zero, self.offload, self.deepspeed)

    @property
    def optim(self) -> Any:
        from dr_train.backend import OptimSettings

        return OptimSettings(self.lr, self.betas, self.weight_decay, self.clip)

    # Fields that change neither the model nor the optimisation; every other field of the config (a
    # recipe's too) must be the same when a run is resumed.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset(
        {
            "out",
            "save_every",
            "keep",
            "eval_every",
            "log_every",
            "kernels",
            "grad_ckpt",
            "offload_activations",
            "zero",
            "offload",
            "deepspeed",
            "copy_warmup",
        }
    )

    def resume_keys(self) -> dict[str, Any]:
        """Settings a resumed run must share with the one it continues: every field but RESUME_FREE."""
        return _settings_of(self, self.RESUME_FREE)


class LMConfig(RunSettings, TrainConfig):
    """Everything a mid-training or SFT run takes: the trainer's settings and the run's inputs."""

    stage: Stage = Field(json_schema_extra=not_a_flag())
    model: str = Field(
        "tiny:qwen2",
        description="A local Hugging Face folder, a named model (smollm2-135m), a config JSON (random "
        "init), or tiny:qwen2 / tiny:qwen2-small.",
        json_schema_extra=flag(short="-m"),
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer folder, or 'train' to learn a byte-level BPE from the data (default for new "
        "models).",
    )
    vocab_size: int = Field(2048, description="Vocabulary of a tokenizer learnt with --tokenizer train.")
    long: LongPolicy = Field(
        "drop", description="Records over --max-len: drop, truncate, error, or split (mid-training only)."
    )
    eval: list[str] = Field(default_factory=list, description="Held-out JSONL for eval loss.")
    precision: Precision = Field(
        Precision.auto,
        description="bf16 (autocast over fp32 weights) or fp32; auto: bf16 on a GPU or a CPU with AMX, else "
        "fp32.",
    )
    rope_theta: float | None = Field(None, description="New rope base, e.g. 1000000 for 128K.")
    rope_scaling: str | None = Field(
        None, description="Context extension TYPE:FACTOR: yarn:4, linear:4, dynamic:4."
    )
    max_positions: int | None = Field(None, description="max_position_embeddings to save (default: scaled).")

    # `precision` is compared as what it resolved to (`bf16`); evaluation data does not change training
    RESUME_FREE: ClassVar[frozenset[str]] = (
        TrainConfig.RESUME_FREE | RunSettings.RUN_FREE | {"precision", "eval"}
    )


def _stage_defaults(out: str, long: LongPolicy, lr: float) -> dict[str, Any]:
    """The fields whose defaults a stage sets, with the help they share."""
    return {
        "out": Field(Path(out), description=TrainConfig.model_fields["out"].description,
                     json_schema_extra=flag(short="-o")),
        "long": Field(long, description=LMConfig.model_fields["long"].description),
        "lr": Field(lr, description=TrainConfig.model_fields["lr"].description),
    }  # fmt: skip


_MIDTRAIN = _stage_defaults("runs/midtrain", "split", 2e-5)
_SFT = _stage_defaults("runs/sft", "drop", 1e-5)


class MidtrainConfig(LMConfig):
    stage: Literal["midtrain"] = Field("midtrain", json_schema_extra=not_a_flag())
    out: Path = _MIDTRAIN["out"]
    long: LongPolicy = _MIDTRAIN["long"]
    lr: float = _MIDTRAIN["lr"]


class SFTConfig(LMConfig):
    stage: Literal["sft"] = Field("sft", json_schema_extra=not_a_flag())
    out: Path = _SFT["out"]
    long: LongPolicy = _SFT["long"]
    lr: float = _SFT["lr"]


class RLConfig(BaseModel):
    """The RL trainer's settings."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="Checkpoint folder.", json_schema_extra=flag(short="-o"))
    algo: Algo = Field("grpo", description="grpo (group-normalized) or ppo (value head + GAE).")
    steps: int = Field(10, description="RL steps (each: rollouts, then an update).")
    tasks_per_step: int = Field(8, description="Tasks per step.")
    group: int = Field(4, description="Rollouts per task.", json_schema_extra=flag(short="-G"))
    lr: float = Field(1e-5, description="Learning rate.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    clip: float = Field(0.2, description="PPO ratio clipping ε.")
    value_clip: float = Field(0.2, description="PPO value clipping.")
    kl_coef: float = Field(0.01, description="KL to the starting policy.")
    vf_coef: float = Field(0.1, description="Value-loss weight (PPO).")
    gamma: float = Field(1.0, description="Discount (PPO; the report uses 1).")
    lam: float = Field(1.0, description="GAE λ (PPO; the report uses 1).")
    epochs: int = Field(1, description="Passes over each step's rollouts.")
    minibatch: int = Field(8, description="Sequences per optimizer step.")
    loss_norm: Literal["rollout", "token"] = Field(
        "rollout",
        description="How a minibatch's token losses are averaged: rollout gives every rollout the same "
        "weight (the mean over its own tokens, as GRPO does); token gives every token the same weight, so "
        "long rollouts count for more.",
    )
    grad_clip: float = Field(1.0, description="Gradient-norm clipping.")
    temperature: float = Field(1.0, description="Sampling temperature.")
    top_p: float = Field(1.0, description="Nucleus sampling.")
    tis_cap: float | None = Field(
        None,
        description="Truncated importance sampling for the engine/trainer gap: weight each token's policy "
        "loss by min(π_train/π_engine, CAP), as verl does (e.g. 2).",
    )
    concurrency: int = Field(2, description="Rollouts at once.")
    max_staleness: int = Field(
        0,
        ge=0,
        description="Asynchronous RL: rollouts go on sampling in the vLLM engines during the update, at most "
        "K policy versions behind the one being updated; a group with an older token is dropped (0: "
        "sampling and updating take turns). The update then is decoupled PPO's: clipped against the "
        "trainer's weights when it starts, each token weighted by min(π_train/π_sampled, --tis-cap), "
        "--tis-cap being 2 unless given.",
    )
    sync_pause: Literal["abort", "wait"] = Field(
        "abort",
        description="Asynchronous RL: what a weight sync does to requests in flight. abort: vLLM stops them "
        "and they are sent again with their tokens so far once the engine holds the new weights (each "
        "token keeps the version that sampled it); wait: they finish on the old weights first.",
    )
    weight_sync: Literal["disk", "nccl"] = Field(
        "disk",
        description="How each update reaches the vLLM engines: disk (the trainer writes the policy to a "
        "folder and each engine reloads it; any machine, the engines sharing the filesystem) or nccl (the "
        "first rank broadcasts it GPU to GPU through vLLM's weight-transfer engine; engines started with "
        '--weight-transfer-config \'{"backend": "nccl"}\').',
    )
    reward: RewardSource = Field(
        "auto",
        description="Report tasks' reward: rules (the checklist's rule checks, the world's truth), judge "
        "(the judge model rules on every item), auto (judge when one is given). Question tasks keep their "
        "rule reward; metrics.jsonl logs the rules' score beside the judge's.",
    )
    reward_mode: RewardMode = Field(
        "strict",
        description="strict (a requirement counts only when fully met, a flaw when present even partly) or "
        "graded (partially met counts half).",
    )
    judge_concurrency: int = Field(16, description="Judge calls at once (a vLLM judge batches them).")
    skip_flat_groups: bool = Field(
        True,
        description="GRPO: leave out of the update each group whose samples all got the same reward (zero "
        "advantage, so only the KL term would train on them), as DAPO does; metrics.jsonl counts them as "
        "flat_groups.",
        json_schema_extra=flag(off="--train-flat-groups"),
    )
    save_every: int = Field(0, description="Checkpoint every N steps (0: only the final model).")
    keep: int = Field(2, description="How many step checkpoints to keep.")
    seed: int = Field(0, description="Seed of the task order and sampling.")
    kernels: bool = Field(True, description="dr_kernels' fused log-probabilities (off: plain HF).")

    # Fields that change neither the policy nor the optimisation (--steps may grow: the learning rate
    # does not depend on it); every other field of the config (a recipe's too) must be the same on resume.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset(
        {"out", "steps", "concurrency", "judge_concurrency", "save_every", "keep", "kernels", "weight_sync"}
    )

    def resume_keys(self) -> dict[str, Any]:
        """Settings a resumed run must share with the one it continues: every field but RESUME_FREE."""
        return _settings_of(self, self.RESUME_FREE)

    @model_validator(mode="after")
    def _stale_tokens_weighted(self) -> RLConfig:
        # tokens sampled by older weights are weighted by their importance ratio, truncated
        if self.max_staleness and self.tis_cap is None:
            self.tis_cap = 2.0
        return self


class RLRecipeConfig(RunSettings, RLConfig):
    """Everything an RL run takes: the trainer's settings, the policy, the agent's tools and budgets, the
    judge, and DeepSpeed."""

    out: Path = Field(Path("runs/rl"), description="Checkpoint folder.", json_schema_extra=flag(short="-o"))
    model: str = Field(
        "", description="The policy to start from: a Hugging Face folder.", json_schema_extra=flag(short="-m")
    )
    index: str | None = Field(
        None, description="Search index the agent uses.", json_schema_extra=flag(short="-i")
    )
    search: str | None = Field(None, description="Search backend: local, searxng, brave.")
    max_steps: int = Field(8, description="Agent model calls per rollout.")
    max_tokens: int = Field(16384, description="Prompt + completion tokens per rollout.")
    max_output_tokens: int = Field(512, description="Tokens per model call.")
    judge_base_url: str | None = Field(None, description="Judge endpoint for checklist tasks.")
    judge_model: str | None = Field(None, description="Judge model for checklist tasks.")
    judge_serve: str | None = Field(
        None,
        description="A judge model folder to serve here for the run (vLLM where it can, else transformers "
        "serve), instead of --judge-base-url/--judge-model.",
    )
    zero: int | None = Field(None, description="DeepSpeed ZeRO stage for the update: 0, 1 or 2.")
    deepspeed: str | None = Field(None, description="A DeepSpeed JSON config, passed through.")
    engine: Literal["auto", "vllm", "hf"] = Field(
        "auto",
        description="Where the policy samples: vllm (engines at --rollout-url, or one started here; the "
        "weights are pushed into them after every update), hf (generate in this process), or auto (vllm "
        "when installed).",
    )
    rollout_url: list[str] = Field(
        default_factory=list,
        description="A vLLM server to sample in (repeat for several; its weights are replaced).",
    )
    sync_tolerance: float = Field(
        0.1, description="Largest probe |Δ logp| between an engine and the trainer after a sync."
    )

    # where the engines and the judge are, and how closely a sync must match, change no result
    RESUME_FREE: ClassVar[frozenset[str]] = (
        RLConfig.RESUME_FREE
        | RunSettings.RUN_FREE
        | {
            "engine",
            "rollout_url",
            "sync_tolerance",
            "judge_base_url",
            "judge_concurrency",
            "zero",
            "deepspeed",
        }
    )

    @field_validator("rollout_url")
    @classmethod
    def _server_roots(cls, urls: list[str]) -> list[str]:
        return [server_root(url) for url in urls]
