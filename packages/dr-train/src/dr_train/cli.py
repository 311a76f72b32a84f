"""`dr train`: midtrain, sft and rl, as thin commands over `dr_train.recipes`.

Each command turns its flags into the recipe's config (flags over `[train.<recipe>]` of the config file
and DR_TRAIN_<RECIPE>_* variables over the defaults; a flag not given is None) and runs the recipe, here
or as `--nproc` ranks under torchrun.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from dr_core.options import Inputs, OnErrorChoice, Rejects

app = typer.Typer(help="Train: mid-training, SFT and RL into Hugging Face checkpoints.", no_args_is_help=True)


class LongChoice(StrEnum):
    DROP = "drop"
    TRUNCATE = "truncate"
    SPLIT = "split"  # (a member called `split` would hide str.split)
    ERROR = "error"


class PrecisionChoice(StrEnum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class AlgoChoice(StrEnum):
    grpo = "grpo"
    ppo = "ppo"


class RolloutEngineChoice(StrEnum):
    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class LossNormChoice(StrEnum):
    rollout = "rollout"
    token = "token"


class RewardChoice(StrEnum):
    auto = "auto"
    rules = "rules"
    judge = "judge"


class RewardModeChoice(StrEnum):
    strict = "strict"
    graded = "graded"


def _opt(*names: str, help: str | None = None) -> Any:
    return typer.Option(*names, help=help, show_default=False)


OnError = Annotated[
    OnErrorChoice | None,
    _opt(
        "--on-error",
        help="fail: stop at the first bad line (exit 2). skip: keep going, bad lines go to the rejects "
        "file (default: fail).",
    ),
]
OutOpt = Annotated[
    str | None,
    _opt(
        "--out",
        "-o",
        help="Checkpoint folder: checkpoint-N/ inside, final model at the top (default: runs/STAGE).",
    ),
]
ModelOpt = Annotated[
    str | None,
    _opt(
        "--model",
        "-m",
        help="A local Hugging Face folder, a named model (smollm2-135m), a config JSON (random init), or "
        "tiny:qwen2 / tiny:qwen2-small (default: tiny:qwen2).",
    ),
]
TokenizerOpt = Annotated[
    str | None,
    _opt(
        help="Tokenizer folder, or 'train' to learn a byte-level BPE from the data (default for new models)."
    ),
]
VocabOpt = Annotated[
    int | None,
    _opt("--vocab-size", help="Vocabulary of a tokenizer learnt with --tokenizer train (default: 2048)."),
]
MaxLenOpt = Annotated[
    int | None, _opt("--max-len", help="Tokens per packed row (e.g. 32768, then 131072) (default: 32768).")
]
TokensOpt = Annotated[
    int | None,
    _opt("--tokens-per-step", help="Tokens per optimizer step, all ranks (default: one row each)."),
]
LongOpt = Annotated[
    LongChoice | None,
    _opt("--long", help="Records over --max-len: drop, truncate, error, or split (mid-training only)."),
]
LrOpt = Annotated[float | None, _opt("--lr", help="Peak learning rate.")]
WarmupOpt = Annotated[
    int | None, _opt("--warmup", help="Linear warm-up steps (cosine decay after) (default: 0).")
]
MinLrOpt = Annotated[
    float | None, _opt("--min-lr-ratio", help="Final learning rate as a share of --lr (default: 0.1).")
]
WdOpt = Annotated[float | None, _opt("--weight-decay", help="AdamW weight decay (default: 0).")]
ClipOpt = Annotated[float | None, _opt("--clip", help="Gradient-norm clipping (default: 1).")]
EpochsOpt = Annotated[float | None, _opt("--epochs", help="Passes over the data (default: 1).")]
StepsOpt = Annotated[int | None, _opt("--max-steps", help="Stop after this many steps (overrides --epochs).")]
SaveOpt = Annotated[
    int | None, _opt("--save-every", help="Checkpoint every N steps (0: only the final model) (default: 0).")
]
KeepOpt = Annotated[int | None, _opt("--keep", help="How many step checkpoints to keep (default: 2).")]
EvalOpt = Annotated[list[str] | None, _opt("--eval", help="Held-out JSONL for eval loss.")]
EvalEveryOpt = Annotated[
    int | None, _opt("--eval-every", help="Eval every N steps (and at the end) (default: 0).")
]
SeedOpt = Annotated[int | None, _opt("--seed", help="(default: 0)")]
PrecisionOpt = Annotated[
    PrecisionChoice | None,
    _opt(
        "--precision",
        help="bf16 (autocast over fp32 weights) or fp32; auto: bf16 on a GPU or a CPU with AMX, else fp32 "
        "(default: auto).",
    ),
]
KernelsOpt = Annotated[
    bool | None,
    _opt(
        "--kernels/--no-kernels",
        help="dr_kernels' fused loss and packed attention (off: plain HF) (default: on).",
    ),
]
CkptOpt = Annotated[
    bool | None, _opt("--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing (default: on).")
]
ActOffloadOpt = Annotated[
    bool | None, _opt("--offload-activations", help="Keep saved activations in CPU memory.")
]
ZeroOpt = Annotated[int | None, _opt("--zero", help="DeepSpeed ZeRO stage preset: 0, 1, 2 or 3.")]
OffloadOpt = Annotated[
    bool | None, _opt("--offload", help="ZeRO-Offload: optimizer (and ZeRO-3 parameters) on CPU.")
]
DeepSpeedOpt = Annotated[str | None, _opt("--deepspeed", help="A DeepSpeed JSON config, passed through.")]
NprocOpt = Annotated[
    int | None, _opt("--nproc", help="Processes on this machine (relaunches under torchrun) (default: 1).")
]
SpOpt = Annotated[
    int | None,
    _opt(
        "--sp",
        help="Ulysses sequence parallelism (DeepSpeed): N ranks share each row, each holding 1/N of its "
        "tokens and attending with 1/N of the heads. Divides --nproc (default: 1).",
    ),
]
ResumeOpt = Annotated[bool | None, _opt("--resume", help="Continue from the newest checkpoint in --out.")]
CopyWarmupOpt = Annotated[
    int | None,
    _opt(
        "--copy-warmup",
        help="For a model trained from scratch: up to N steps of copy drills first (random tokens with a "
        "repeated span), ending once 95%% of the repeats are predicted; teaches it to copy from its context "
        "(names, ids), which a small text budget does not. Log in OUT/copy_warmup.jsonl (default: 0).",
    ),
]
RopeThetaOpt = Annotated[float | None, _opt("--rope-theta", help="New rope base, e.g. 1000000 for 128K.")]
RopeScalingOpt = Annotated[
    str | None, _opt("--rope-scaling", help="Context extension TYPE:FACTOR: yarn:4, linear:4, dynamic:4.")
]
MaxPosOpt = Annotated[
    int | None, _opt("--max-positions", help="max_position_embeddings to save (default: scaled).")
]


def _run(recipe: str, flags: dict[str, Any]) -> None:
    """Read the recipe's config (flags over the config file) and run it; exits with its status."""
    from dr_core.log import stdout_for_data_only
    from dr_train.recipes import recipe as find
    from dr_train.recipes.common import launch, read_config

    cls, run = find(recipe)
    flags = {k: v.value if isinstance(v, StrEnum) else v for k, v in flags.items()}
    config = read_config(cls, recipe, flags)
    with stdout_for_data_only() as data:
        status = launch(recipe, config, run, data)
    if status:
        raise typer.Exit(status)


def _lm_command(stage: str, help: str) -> None:
    @app.command(stage, help=help)
    def command(
        inputs: Inputs = None,
        model: ModelOpt = None,
        out: OutOpt = None,
        tokenizer: TokenizerOpt = None,
        vocab_size: VocabOpt = None,
        max_len: MaxLenOpt = None,
        tokens_per_step: TokensOpt = None,
        long: LongOpt = None,
        lr: LrOpt = None,
        warmup: WarmupOpt = None,
        min_lr_ratio: MinLrOpt = None,
        weight_decay: WdOpt = None,
        clip: ClipOpt = None,
        epochs: EpochsOpt = None,
        max_steps: StepsOpt = None,
        save_every: SaveOpt = None,
        keep: KeepOpt = None,
        eval: EvalOpt = None,
        eval_every: EvalEveryOpt = None,
        seed: SeedOpt = None,
        precision: PrecisionOpt = None,
        kernels: KernelsOpt = None,
        grad_ckpt: CkptOpt = None,
        offload_activations: ActOffloadOpt = None,
        zero: ZeroOpt = None,
        offload: OffloadOpt = None,
        deepspeed: DeepSpeedOpt = None,
        nproc: NprocOpt = None,
        sp: SpOpt = None,
        copy_warmup: CopyWarmupOpt = None,
        resume: ResumeOpt = None,
        rope_theta: RopeThetaOpt = None,
        rope_scaling: RopeScalingOpt = None,
        max_positions: MaxPosOpt = None,
        on_error: OnError = None,
        rejects: Rejects = None,
    ) -> None:
        flags = dict(locals())
        flags["warmup_steps"] = flags.pop("warmup")
        _run(stage, flags)


_lm_command(
    "midtrain",
    "Mid-training: next-token loss on every token of documents ('text') and rendered conversations, "
    "packed into --max-len rows (positions restart per document; no attention across documents). "
    "Run it at 32K, then again from that checkpoint at 128K with --rope-theta or --rope-scaling yarn:4. "
    "Defaults: --lr 2e-5, --long split, --out runs/midtrain.",
)
_lm_command(
    "sft",
    "SFT: loss only on assistant turns of chat examples (or trajectories, plans, reports, as "
    "dr data sft reads them), packed into --max-len rows. Checkpoints are Hugging Face folders; "
    "--resume continues exactly. Defaults: --lr 1e-5, --long drop, --out runs/sft.",
)


@app.command()
def rl(
    inputs: Inputs = None,
    model: Annotated[
        str | None, _opt("--model", "-m", help="The policy to start from: a Hugging Face folder.")
    ] = None,
    out: OutOpt = None,
    index: Annotated[str | None, _opt("--index", "-i", help="Search index the agent uses.")] = None,
    search: Annotated[str | None, _opt("--search", help="Search backend: local, searxng, brave.")] = None,
    algo: Annotated[
        AlgoChoice | None,
        _opt("--algo", help="grpo (group-normalized) or ppo (value head + GAE) (default: grpo)."),
    ] = None,
    steps: Annotated[
        int | None, _opt("--steps", help="RL steps (each: rollouts, then an update) (default: 10).")
    ] = None,
    tasks_per_step: Annotated[
        int | None, _opt("--tasks-per-step", help="Tasks per step (default: 8).")
    ] = None,
    group: Annotated[int | None, _opt("--group", "-G", help="Rollouts per task (default: 4).")] = None,
    lr: Annotated[float | None, _opt("--lr", help="Learning rate (default: 1e-5).")] = None,
    clip: Annotated[float | None, _opt("--clip", help="PPO ratio clipping ε (default: 0.2).")] = None,
    kl_coef: Annotated[
        float | None, _opt("--kl-coef", help="KL to the starting policy (default: 0.01).")
    ] = None,
    vf_coef: Annotated[
        float | None, _opt("--vf-coef", help="Value-loss weight (PPO) (default: 0.1).")
    ] = None,
    gamma: Annotated[
        float | None, _opt("--gamma", help="Discount (PPO; the report uses 1) (default: 1).")
    ] = None,
    lam: Annotated[float | None, _opt("--lam", help="GAE λ (PPO; the report uses 1) (default: 1).")] = None,
    epochs: Annotated[
        int | None, _opt("--epochs", help="Passes over each step's rollouts (default: 1).")
    ] = None,
    minibatch: Annotated[
        int | None, _opt("--minibatch", help="Sequences per optimizer step (default: 8).")
    ] = None,
    loss_norm: Annotated[
        LossNormChoice | None,
        _opt(
            "--loss-norm",
            help="rollout: each rollout weighs the same (mean over its tokens, GRPO's); token: each token "
            "(default: rollout).",
        ),
    ] = None,
    temperature: Annotated[
        float | None, _opt("--temperature", help="Sampling temperature (default: 1).")
    ] = None,
    max_steps: Annotated[
        int | None, _opt("--max-steps", help="Agent model calls per rollout (default: 8).")
    ] = None,
    max_tokens: Annotated[
        int | None, _opt("--max-tokens", help="Prompt + completion tokens per rollout (default: 16384).")
    ] = None,
    max_output_tokens: Annotated[
        int | None, _opt("--max-output-tokens", help="Tokens per model call (default: 512).")
    ] = None,
    concurrency: Annotated[int | None, _opt("--concurrency", help="Rollouts at once (default: 2).")] = None,
    judge_base_url: Annotated[
        str | None, _opt("--judge-base-url", help="Judge endpoint for checklist tasks.")
    ] = None,
    judge_model: Annotated[str | None, _opt("--judge-model", help="Judge model for checklist tasks.")] = None,
    judge_serve: Annotated[
        str | None,
        _opt(
            "--judge-serve",
            help="A judge model folder to serve here for the run (vLLM where it can, else transformers "
            "serve), instead of --judge-base-url/--judge-model.",
        ),
    ] = None,
    reward: Annotated[
        RewardChoice | None,
        _opt(
            "--reward",
            help="Report tasks' reward: rules (the checklist's rule checks, the world's truth), judge (the "
            "judge model rules on every item), auto (judge when one is given) (default: auto). Question "
            "tasks keep their rule reward; metrics.jsonl logs the rules' score beside the judge's.",
        ),
    ] = None,
    reward_mode: Annotated[
        RewardModeChoice | None,
        _opt(
            "--reward-mode",
            help="strict (a requirement counts only when fully met, a flaw when present even partly) or "
            "graded (partially met counts half) (default: strict).",
        ),
    ] = None,
    judge_concurrency: Annotated[
        int | None, _opt("--judge-concurrency", help="Judge calls at once (default: 16).")
    ] = None,
    save_every: SaveOpt = None,
    keep: KeepOpt = None,
    seed: SeedOpt = None,
    kernels: KernelsOpt = None,
    zero: Annotated[
        int | None, _opt("--zero", help="DeepSpeed ZeRO stage for the update: 0, 1 or 2.")
    ] = None,
    deepspeed: DeepSpeedOpt = None,
    nproc: NprocOpt = None,
    engine: Annotated[
        RolloutEngineChoice | None,
        _opt(
            "--engine",
            help="Where the policy samples: vllm (engines at --rollout-url, or one started here; the "
            "weights are pushed into them after every update), hf (generate in this process), or auto "
            "(vllm when installed) (default: auto).",
        ),
    ] = None,
    rollout_url: Annotated[
        list[str] | None,
        _opt(
            "--rollout-url", help="A vLLM server to sample in (repeat for several; its weights are replaced)."
        ),
    ] = None,
    tis_cap: Annotated[
        float | None,
        _opt(
            "--tis-cap",
            help="Truncated importance sampling for the engine/trainer gap: weight each token's policy loss "
            "by min(π_train/π_engine, CAP), as verl does (e.g. 2).",
        ),
    ] = None,
    skip_flat_groups: Annotated[
        bool | None,
        _opt(
            "--skip-flat-groups/--train-flat-groups",
            help="GRPO: leave out of the update each group whose samples all got the same reward (zero "
            "advantage, so only the KL term would train on them), as DAPO does; metrics.jsonl counts them "
            "as flat_groups (default: skip).",
        ),
    ] = None,
    sync_tolerance: Annotated[
        float | None,
        _opt(
            "--sync-tolerance",
            help="Largest probe |Δ logp| between an engine and the trainer after a sync (default: 0.1).",
        ),
    ] = None,
    resume: ResumeOpt = None,
    on_error: OnError = None,
    rejects: Rejects = None,
) -> None:
    """RL (GRPO or PPO) on research tasks, with rollouts through the real agent loop and tools.

    Tasks are Task JSONL, questions and report tasks mixed as given. The policy researches each task
    --group times; each run is rewarded (questions by their exact answer; reports by their checklist, with
    the rules or a judge model, the rules' score logged beside it); a run the judge abstains on is dropped
    from its group; updates use only the tokens the policy sampled.
    Writes metrics.jsonl and Hugging Face checkpoints like sft. With --nproc N every rank holds the whole
    policy, runs a share of each step's rollouts and of each minibatch, and DeepSpeed reduces the
    gradients (ZeRO-1/2 split the optimizer state and gradients)."""
    _run("rl", dict(locals()))
