"""`dr train`: mid-training and SFT into Hugging Face checkpoints (RL arrives as its own command)."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from dr_core.options import Inputs, OnErrorChoice, OnErrorOpt, Rejects

app = typer.Typer(help="Train: mid-training and SFT on packed long-context rows.", no_args_is_help=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A local Hugging Face folder, a config JSON (random init), or tiny:qwen2 / tiny:qwen2-small.",
    ),
]
OutOpt = Annotated[
    str, typer.Option("--out", "-o", help="Checkpoint folder: checkpoint-N/ inside, final model at the top.")
]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(
        help="Tokenizer folder, or 'train' to learn a byte-level BPE from the data (default for new models)."
    ),
]
VocabOpt = Annotated[int, typer.Option(help="Vocabulary size of a tokenizer learnt with --tokenizer train.")]
MaxLenOpt = Annotated[int, typer.Option("--max-len", help="Tokens per packed row (e.g. 32768, then 131072).")]
TokensOpt = Annotated[
    int | None,
    typer.Option("--tokens-per-step", help="Tokens per optimizer step, all ranks (default: one row each)."),
]
LongOpt = Annotated[
    str,
    typer.Option(
        "--long", help="Records over --max-len: drop, truncate, error (or split, mid-training only)."
    ),
]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
WarmupOpt = Annotated[int, typer.Option("--warmup", help="Linear warm-up steps (cosine decay after).")]
MinLrOpt = Annotated[float, typer.Option("--min-lr-ratio", help="Final learning rate as a share of --lr.")]
WdOpt = Annotated[float, typer.Option("--weight-decay")]
ClipOpt = Annotated[float, typer.Option("--clip", help="Gradient-norm clipping.")]
EpochsOpt = Annotated[float, typer.Option("--epochs")]
StepsOpt = Annotated[
    int | None, typer.Option("--max-steps", help="Stop after this many steps (overrides --epochs).")
]
SaveOpt = Annotated[
    int, typer.Option("--save-every", help="Checkpoint every N steps (0: only the final model).")
]
KeepOpt = Annotated[int, typer.Option("--keep", help="How many step checkpoints to keep.")]
EvalOpt = Annotated[list[str] | None, typer.Option("--eval", help="Held-out JSONL for eval loss.")]
EvalEveryOpt = Annotated[int, typer.Option("--eval-every", help="Eval every N steps (and at the end).")]
SeedOpt = Annotated[int, typer.Option("--seed")]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="bf16 or fp32 (auto: bf16 on a GPU, fp32 on CPU).")
]
KernelsOpt = Annotated[
    bool,
    typer.Option(
        "--kernels/--no-kernels", help="dr_kernels' fused loss and packed attention (off: plain HF)."
    ),
]
CkptOpt = Annotated[bool, typer.Option("--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing.")]
ActOffloadOpt = Annotated[
    bool, typer.Option("--offload-activations", help="Keep saved activations in CPU memory.")
]
ZeroOpt = Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage preset: 0, 1, 2 or 3.")]
OffloadOpt = Annotated[
    bool, typer.Option("--offload", help="ZeRO-Offload: optimizer (and ZeRO-3 parameters) on CPU.")
]
DeepSpeedOpt = Annotated[
    str | None, typer.Option("--deepspeed", help="A DeepSpeed JSON config, passed through.")
]
NprocOpt = Annotated[
    int, typer.Option("--nproc", help="Processes on this machine (relaunches under torchrun).")
]
SpOpt = Annotated[
    int,
    typer.Option(
        "--sp",
        help="Ulysses sequence parallelism (DeepSpeed): N ranks share each row, each holding 1/N of its "
        "tokens and attending with 1/N of the heads. Divides --nproc.",
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")]
CopyWarmupOpt = Annotated[
    int,
    typer.Option(
        "--copy-warmup",
        help="For a model trained from scratch: up to N steps of copy drills first (random tokens with a "
        "repeated span), ending once 95%% of the repeats are predicted; teaches it to copy from its context "
        "(names, ids), which a small text budget does not. Log in OUT/copy_warmup.jsonl.",
    ),
]
RopeThetaOpt = Annotated[
    float | None, typer.Option("--rope-theta", help="New rope base, e.g. 1000000 for 128K.")
]
RopeScalingOpt = Annotated[
    str | None,
    typer.Option("--rope-scaling", help="Context extension TYPE:FACTOR: yarn:4, linear:4, dynamic:4."),
]
MaxPosOpt = Annotated[
    int | None, typer.Option("--max-positions", help="max_position_embeddings to save (default: scaled).")
]


def _train(stage: str, inputs: list[str] | None, data: Any, **opts) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from dr_core.errors import InputError
    from dr_core.jsonl import RejectWriter
    from dr_core.log import logger
    from dr_core.pipe import default_rejects_path
    from dr_train import checkpoint, distributed
    from dr_train.data import build_dataset, item_texts, read_items
    from dr_train.model import RopeSettings, build, is_checkpoint
    from dr_train.tiny import CHAT_TEMPLATE
    from dr_train.trainer import TrainConfig, Trainer, print_summary

    sources = inputs or ["-"]
    if opts["long"] not in ("drop", "truncate", "split", "error"):
        raise InputError(f"--long {opts['long']}: choose drop, truncate, error or split")
    _relaunch_if_asked(stage, opts["nproc"], opts["zero"], opts["deepspeed"], sources, data)
    dist = distributed.current()
    out = Path(opts["out"])
    finished, resume_from = checkpoint.resume_point(out, opts["resume"])
    if finished:
        logger.info("%s already holds a finished run; nothing to resume", out)
        return

    import torch

    precision = opts["precision"]
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    if precision not in ("bf16", "fp32"):
        raise InputError(f"--precision {precision}: choose bf16, fp32 or auto")
    if opts["sp"] < 1 or dist.world % opts["sp"]:
        raise InputError(f"--sp {opts['sp']} must divide the number of processes ({dist.world})")
    if opts["copy_warmup"] < 0:
        raise InputError(f"--copy-warmup {opts['copy_warmup']}: give a number of steps (0: none)")
    if opts["copy_warmup"] and opts["sp"] > 1:
        raise InputError("--copy-warmup runs without --sp (its drills are short rows): run it first, alone")
    tokens_per_step = opts["tokens_per_step"] or opts["max_len"] * (dist.world // opts["sp"])
    config = TrainConfig(
        stage=stage,
        out=out,
        max_len=opts["max_len"],
        tokens_per_step=tokens_per_step,
        lr=opts["lr"],
        min_lr_ratio=opts["min_lr_ratio"],
        warmup_steps=opts["warmup"],
        weight_decay=opts["weight_decay"],
        clip=opts["clip"],
        epochs=opts["epochs"],
        max_steps=opts["max_steps"],
        save_every=opts["save_every"],
        keep=opts["keep"],
        eval_every=opts["eval_every"],
        seed=opts["seed"],
        bf16=precision == "bf16",
        kernels=opts["kernels"],
        grad_ckpt=opts["grad_ckpt"],
        offload_activations=opts["offload_activations"],
        zero=opts["zero"],
        offload=opts["offload"],
        deepspeed=opts["deepspeed"],
        sp=opts["sp"],
        copy_warmup=opts["copy_warmup"],
    )
    device = distributed.init(dist, config.uses_deepspeed)
    on_error = opts["on_error"].value
    rejects_path = opts["rejects"] or (
        default_rejects_path(sources, str(out / "train.jsonl")) if on_error == "skip" else None
    )
    rejects_path = _rank_rejects(rejects_path, dist)
    with RejectWriter(rejects_path) if rejects_path else _Null() as rejects:
        items = read_items(sources, stage, on_error, rejects)  # type: ignore[arg-type]
    rope = RopeSettings(opts["rope_theta"], opts["rope_scaling"], opts["max_positions"])
    spec = str(resume_from) if resume_from is not None else opts["model"]
    tokenizer_spec = opts["tokenizer"]
    if dist.world > 1 and not is_checkpoint(spec) and tokenizer_spec in (None, "train"):
        # one tokenizer for every rank: the first learns it, the others read it
        shared = out / "tokenizer.partial"
        if dist.main:
            from dr_train.tiny import train_tokenizer

            train_tokenizer(item_texts(items, CHAT_TEMPLATE), vocab_size=opts["vocab_size"]).save_pretrained(
                shared
            )
        distributed.barrier(dist)
        tokenizer_spec = str(shared)
    model, tokenizer = build(
        spec,
        tokenizer_spec,
        lambda: item_texts(items, CHAT_TEMPLATE),
        rope if resume_from is None else RopeSettings(),
        config.seed,
        vocab_size=opts["vocab_size"],
    )
    if tokenizer_spec is not None and tokenizer_spec.endswith("tokenizer.partial"):
        distributed.barrier(dist)  # every rank has read it
        if dist.main:
            import shutil

            shutil.rmtree(tokenizer_spec, ignore_errors=True)
    dataset = build_dataset(items, tokenizer, stage, config.max_len, opts["long"])  # type: ignore[arg-type]
    eval_data = None
    if opts["eval"]:
        eval_items = read_items(opts["eval"], stage)  # type: ignore[arg-type]
        eval_data = build_dataset(eval_items, tokenizer, stage, config.max_len, "truncate")  # type: ignore[arg-type]
    if resume_from is not None:
        state = checkpoint.read_state(resume_from)
        if state["data"] != dataset.fingerprint():
            raise InputError(f"--resume: the input is not the data {resume_from} was trained on")
        checkpoint.check_settings(resume_from, {**state["settings"], "ranks": state["world"]},
                                  {**config.resume_keys(), "ranks": dist.world})  # fmt: skip
    if dist.main:
        logger.info(
            "%s: %d rows of up to %d tokens (%d tokens, %d learnt) from %d records",
            stage,
            len(dataset.rows),
            config.max_len,
            dataset.tokens,
            dataset.label_tokens,
            dataset.stats.documents,
        )
    trainer = Trainer(model, tokenizer, dataset, config, dist, device, eval_data, resume_from)
    summary = trainer.run()
    if dist.main:
        print_summary(summary, data)
    distributed.shutdown()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _relaunch_if_asked(
    stage: str, nproc: int, zero: int | None, deepspeed: str | None, sources: list[str], data: Any
) -> None:
    """`--nproc N` (N > 1) in a command not yet started as a rank: run it again as N ranks under torchrun
    (with DeepSpeed, ZeRO-0 unless another stage or a config was named) and exit with their status."""
    from dr_train import distributed

    if nproc <= 1 or distributed.LAUNCHED in os.environ or "WORLD_SIZE" in os.environ:
        return
    argv = ["train", stage, *sys.argv[sys.argv.index(stage) + 1 :]]
    argv = _without_option(argv, "--nproc")
    if zero is None and deepspeed is None:
        argv += ["--zero", "0"]
    raise typer.Exit(distributed.relaunch(nproc, argv, list(sources), stdout=data))


def _rank_rejects(path: str | None, dist: Any) -> str | None:
    """Where this rank writes rejected lines: every rank reads the same lines; only the first keeps them."""
    if path is None or dist.main:
        return path
    import tempfile
    from pathlib import Path

    return str(Path(tempfile.mkdtemp()) / "rejects.jsonl")


def _without_option(argv: list[str], name: str) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def _command(stage: str, long_default: str, lr_default: float):  # type: ignore[no-untyped-def]
    def command(
        inputs: Inputs = None,
        model: ModelOpt = "tiny:qwen2",
        out: OutOpt = "runs/" + stage,
        tokenizer: TokenizerOpt = None,
        vocab_size: VocabOpt = 2048,
        max_len: MaxLenOpt = 32768,
        tokens_per_step: TokensOpt = None,
        long: LongOpt = long_default,
        lr: LrOpt = lr_default,
        warmup: WarmupOpt = 0,
        min_lr_ratio: MinLrOpt = 0.1,
        weight_decay: WdOpt = 0.0,
        clip: ClipOpt = 1.0,
        epochs: EpochsOpt = 1.0,
        max_steps: StepsOpt = None,
        save_every: SaveOpt = 0,
        keep: KeepOpt = 2,
        eval: EvalOpt = None,
        eval_every: EvalEveryOpt = 0,
        seed: SeedOpt = 0,
        precision: PrecisionOpt = "auto",
        kernels: KernelsOpt = True,
        grad_ckpt: CkptOpt = True,
        offload_activations: ActOffloadOpt = False,
        zero: ZeroOpt = None,
        offload: OffloadOpt = False,
        deepspeed: DeepSpeedOpt = None,
        nproc: NprocOpt = 1,
        sp: SpOpt = 1,
        copy_warmup: CopyWarmupOpt = 0,
        resume: ResumeOpt = False,
        rope_theta: RopeThetaOpt = None,
        rope_scaling: RopeScalingOpt = None,
        max_positions: MaxPosOpt = None,
        on_error: OnErrorOpt = OnErrorChoice.fail,
        rejects: Rejects = None,
    ) -> None:
        from dr_core.log import stdout_for_data_only

        options = dict(locals())
        options.pop("stage")  # the enclosing function's, seen by locals() as a free variable
        with stdout_for_data_only() as data:
            _train(stage, data=data, **options)

    return command


app.command(
    "midtrain",
    help="Mid-training: next-token loss on every token of documents ('text') and rendered conversations, "
    "packed into --max-len rows (positions restart per document; no attention across documents). "
    "Run it at 32K, then again from that checkpoint at 128K with --rope-theta or --rope-scaling yarn:4.",
)(_command("midtrain", "split", 2e-5))
app.command(
    "sft",
    help="SFT: loss only on assistant turns of chat examples (or trajectories, plans, reports, as "
    "dr data sft reads them), packed into --max-len rows. Checkpoints are Hugging Face folders; "
    "--resume continues exactly.",
)(_command("sft", "drop", 1e-5))


@app.command()
def rl(
    inputs: Inputs = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="The policy to start from: a Hugging Face folder.")
    ] = "",
    out: OutOpt = "runs/rl",
    index: Annotated[str | None, typer.Option("--index", "-i", help="Search index the agent uses.")] = None,
    search: Annotated[str | None, typer.Option(help="Search backend: local, searxng, brave.")] = None,
    algo: Annotated[
        str, typer.Option("--algo", help="grpo (group-normalized) or ppo (value head + GAE).")
    ] = "grpo",
    steps: Annotated[int, typer.Option("--steps", help="RL steps (each: rollouts, then an update).")] = 10,
    tasks_per_step: Annotated[int, typer.Option("--tasks-per-step", help="Tasks per step.")] = 8,
    group: Annotated[int, typer.Option("--group", "-G", help="Rollouts per task.")] = 4,
    lr: LrOpt = 1e-5,
    clip: Annotated[float, typer.Option("--clip", help="PPO ratio clipping ε.")] = 0.2,
    kl_coef: Annotated[float, typer.Option("--kl-coef", help="KL to the starting policy.")] = 0.01,
    vf_coef: Annotated[float, typer.Option("--vf-coef", help="Value-loss weight (PPO).")] = 0.1,
    gamma: Annotated[float, typer.Option("--gamma", help="Discount (PPO; the report uses 1).")] = 1.0,
    lam: Annotated[float, typer.Option("--lam", help="GAE λ (PPO; the report uses 1).")] = 1.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over each step's rollouts.")] = 1,
    minibatch: Annotated[int, typer.Option("--minibatch", help="Sequences per optimizer step.")] = 8,
    loss_norm: Annotated[
        str,
        typer.Option(
            "--loss-norm",
            help="rollout: each rollout weighs the same (mean over its tokens, GRPO's); token: each token.",
        ),
    ] = "rollout",
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature.")] = 1.0,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Agent model calls per rollout.")] = 8,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Prompt + completion tokens per rollout.")
    ] = 16384,
    max_output_tokens: Annotated[
        int, typer.Option("--max-output-tokens", help="Tokens per model call.")
    ] = 512,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Rollouts at once.")] = 2,
    judge_base_url: Annotated[str | None, typer.Option(help="Judge endpoint for checklist tasks.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model for checklist tasks.")] = None,
    save_every: SaveOpt = 0,
    keep: KeepOpt = 2,
    seed: SeedOpt = 0,
    kernels: KernelsOpt = True,
    zero: Annotated[
        int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage for the update: 0, 1 or 2.")
    ] = None,
    deepspeed: DeepSpeedOpt = None,
    nproc: NprocOpt = 1,
    resume: ResumeOpt = False,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
) -> None:
    """RL (GRPO or PPO) on research tasks, with rollouts through the real agent loop and tools.

    Tasks are Task JSONL. The policy researches each task --group times; dr-judge rewards each run (exact
    answer, or the checklist score with a judge model); updates use only the tokens the policy sampled.
    Writes metrics.jsonl and Hugging Face checkpoints like sft. With --nproc N every rank holds the whole
    policy, runs a share of each step's rollouts and of each minibatch, and DeepSpeed reduces the
    gradients (ZeRO-1/2 split the optimizer state and gradients)."""
    from pathlib import Path

    from dr_agent.build import build_agent
    from dr_core.errors import InputError
    from dr_core.jsonl import RejectWriter, read_records
    from dr_core.log import logger, stdout_for_data_only
    from dr_core.pipe import default_rejects_path
    from dr_core.records import Task
    from dr_judge.cli import make_judge
    from dr_train import checkpoint, distributed
    from dr_train.model import RopeSettings, build, is_checkpoint
    from dr_train.rl import RLConfig, RLTrainer, frozen_copy

    if algo not in ("grpo", "ppo"):
        raise InputError(f"--algo {algo}: choose grpo or ppo")
    if loss_norm not in ("rollout", "token"):
        raise InputError(f"--loss-norm {loss_norm}: choose rollout or token")
    if group < 2 and algo == "grpo":
        raise InputError("--group: GRPO compares samples of the same task, so it needs at least 2")
    if not model or not is_checkpoint(model):
        raise InputError(
            f"--model {model!r}: give the Hugging Face folder of the policy (e.g. dr train sft's --out)"
        )
    if zero is not None and zero not in (0, 1, 2):
        raise InputError(f"--zero {zero}: RL generates with the whole policy on every rank; choose 0, 1 or 2")
    sources = inputs or ["-"]
    out_path = Path(out)
    with stdout_for_data_only() as data:
        _relaunch_if_asked("rl", nproc, zero, deepspeed, sources, data)
        dist = distributed.current()
        finished, resume_from = checkpoint.resume_point(out_path, resume)
        if finished:
            logger.info("%s already holds a finished run; nothing to resume", out_path)
            return
        rejects_path = rejects or (
            default_rejects_path(sources, str(out_path / "tasks.jsonl")) if on_error.value == "skip" else None
        )
        rejects_path = _rank_rejects(rejects_path, dist)
        uses_deepspeed = zero is not None or deepspeed is not None
        device = distributed.init(dist, uses_deepspeed)
        if rejects_path:
            with RejectWriter(rejects_path) as writer:
                tasks = list(read_records(sources, Task, on_error="skip", rejects=writer))
        else:
            tasks = list(read_records(sources, Task))
        if not tasks:
            raise InputError("no tasks to train on")
        unjudgeable = [t.id for t in tasks if t.answer is None and not t.checklist]
        if unjudgeable:
            raise InputError(
                f"tasks without an answer or checklist cannot be rewarded: {', '.join(unjudgeable[:5])}"
            )
        judge = make_judge(judge_base_url, judge_model)
        if judge.llm is None and any(t.answer is None for t in tasks):
            raise InputError("checklist tasks need a judge model: --judge-base-url and --judge-model")
        start = str(resume_from) if resume_from is not None else model
        policy, tokenizer = build(start, None, list, RopeSettings(), seed)
        reference = None
        if kl_coef:  # the starting policy; a resumed run reads it again from --model
            reference = frozen_copy(
                policy if resume_from is None else build(model, None, list, RopeSettings(), seed)[0]
            )
        agent = build_agent(
            search={"backend": search, "index": index},
            agent={"max_steps": max_steps, "max_tokens": max_tokens, "max_output_tokens": max_output_tokens},
            web=False,
        )
        config = RLConfig(
            out=out_path,
            algo=algo,  # type: ignore[arg-type]
            steps=steps,
            tasks_per_step=tasks_per_step,
            group=group,
            lr=lr,
            clip=clip,
            kl_coef=kl_coef,
            vf_coef=vf_coef,
            gamma=gamma,
            lam=lam,
            epochs=epochs,
            minibatch=minibatch,
            loss_norm=loss_norm,  # type: ignore[arg-type]
            temperature=temperature,
            concurrency=concurrency,
            save_every=save_every,
            keep=keep,
            seed=seed,
            kernels=kernels,
        )
        ds_config = None
        if uses_deepspeed:  # the batch shape is RL's own (RLTrainer sets it)
            ds_config = distributed.deepspeed_config(
                zero, False, deepspeed, 1, dist.world, config.grad_clip, False, lr, (0.9, 0.999),
                config.weight_decay,
            )  # fmt: skip
        trainer = RLTrainer(
            policy,
            tokenizer,
            reference,
            agent,
            judge,
            tasks,
            config,
            resume_from,
            reference_path=model,
            dist=dist,
            device=device,
            ds_config=ds_config,
        )
        summary = trainer.run()
        if dist.main:
            data.write(json.dumps(summary) + "\n")
            data.flush()
        distributed.shutdown()
