"""The main job: the whole pipeline on the embedded default, one `dr` command after another.

    world → index → trajectories (oracle teacher) → sft data → SFT of SmolLM2-135M-Instruct → serve →
    bench on the held-out world tasks → RL → bench again → tables (untrained, after SFT, after RL; and
    every two of them compared question by question)

With --base-model scratch (--quick's default) a tiny model is instead trained from scratch: copy drills,
then mid-training on another world's encyclopedia and the trajectories, before SFT. Every step is the `dr`
command a user would type (printed to stderr as it runs), reading and writing JSONL and checkpoints under
--out. Re-running it is safe: the data steps are skipped when their output exists, and every training and
bench command runs with --resume, which leaves a finished run alone, continues an interrupted one, and
(for the benches) sets aside a run made with other settings. The tables go to stdout and to OUT/results.md,
OUT/hops.md and OUT/compare.md. The benches and RL rollouts generate with vLLM where it is installed
(--engine). Flags swap in another base model (--base-model FOLDER), a real teacher endpoint (--teacher
endpoint --teacher-base-url URL --teacher-model M) and a GPU (--gpu: bf16 training).

    python scripts/main_job.py --out runs/main            # about 2 h 20 min on a 2-core CPU (README)
    python scripts/main_job.py --out runs/quick --quick   # the pipeline end to end in a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dr_core.models import resolve as resolve_model
from dr_core.proc import child_of_this_process
from dr_core.serving import choose_engine, model_config

DR = [sys.executable, "-m", "dr_cli.main"]
SFT_STEPS = 150


def run(*args: str | Path, stdout: Path | None = None, allow: tuple[int, ...] = ()) -> str:
    command = [*DR, *map(str, args)]
    print("$ dr " + shlex.join(command[len(DR) :]), file=sys.stderr, flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, check=False, preexec_fn=child_of_this_process())
    if result.returncode != 0 and result.returncode not in allow:
        sys.exit(
            f"main job: `dr {args[0]} {args[1] if len(args) > 1 else ''}` failed (exit {result.returncode})"
        )
    text = result.stdout.decode()
    if stdout is not None:
        stdout.write_text(text)
    return text


def once(output: Path, *args: str | Path) -> None:
    """`dr ARGS`, unless `output` (what it writes) is already there: the data steps, which do not resume."""
    if not output.exists():
        run(*args)


def engine_for(model: Path, args: argparse.Namespace) -> str:
    """vllm or hf: --engine, or with auto what `dr serve --engine auto` picks for the checkpoint (vLLM where
    it is installed and can serve it: its CPU attention refuses the from-scratch model's head size of 16)."""
    if args.engine != "auto":
        return str(args.engine)
    return "vllm" if choose_engine("auto", model_config(str(model))) == "vllm" else "hf"


def concurrency(model: Path, args: argparse.Namespace) -> int:
    """Agent runs at once: --concurrency, else 16 on vLLM and 2 on transformers serve or generate."""
    return args.concurrency or (16 if engine_for(model, args) == "vllm" else 2)


def bench(name: str, model: Path, args: argparse.Namespace, out: Path, reports: bool = False) -> Path:
    """`dr bench run --resume` of `model` on the held-out questions, or with `reports` the held-out report
    tasks (judged by their rules: the true checklist score). The bench leaves a finished run of the same
    setup alone and sets aside (OUT.stale-N) one made with other settings; runs that failed (a server error,
    not a wrong answer: exit 3) are retried once, and whatever still fails is left out of the table, whose n
    column says how many were scored."""
    folder = out / "bench" / name
    limit, steps, tokens = args.bench_tasks, args.agent_steps, args.agent_tokens
    if reports:
        limit, steps, tokens = args.report_bench_tasks, args.report_agent_steps, args.report_agent_tokens
    suite = out / "world" / ("reports-test.jsonl" if reports else "test.jsonl")
    # served for the run (vLLM where it can serve the model, else transformers). Text tool calls
    # (dr_core.tool_text): the server renders exactly the tokens the model trained on; through the tools
    # API, transformers serve drops the text of assistant turns that call tools and re-serializes their
    # arguments (tests/agent/test_real_servers.py). RL rollouts render with the tokenizer itself, as training.
    engine = "vllm" if engine_for(model, args) == "vllm" else "transformers"
    flags: list[str | Path] = [
        "--suite", suite, "-o", folder, "--serve", model, "--serve-engine", engine, "--index", out / "index",
        "--no-web", "--concurrency", str(concurrency(model, args)), "--limit", str(limit),
        "--max-steps", str(steps), "--max-tokens", str(tokens), "--temperature", "0", "--tool-mode", "text",
        "--resume", "--on-change", "set-aside",
    ]  # fmt: skip
    for _ in range(2):
        run("bench", "run", *flags, allow=(3,))
        if not json.loads((folder / "summary.json").read_text()).get("failed"):
            break
    return folder


def parse() -> argparse.Namespace:
    """The flags, with the defaults that depend on --quick and --base-model filled in."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/main"))
    parser.add_argument("--quick", action="store_true", help="A small world and short training (CI).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-model", default=None, help="A Hugging Face folder, smollm2-135m, or "
                        "scratch (a tiny Qwen2 trained from scratch) to start from (default: smollm2-135m; "
                        "scratch with --quick).")  # fmt: skip
    parser.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"], help="Where the "
                        "benches and RL generate: vllm (dr serve's vLLM; RL rollouts in a vLLM engine that "
                        "gets the new weights after each update) or hf (transformers serve; HF generate). "
                        "auto: vllm where it is installed and can serve the model.")  # fmt: skip
    parser.add_argument("--tiny", default="tiny:qwen2-mini", help="The from-scratch shape.")
    parser.add_argument("--teacher", default="oracle", choices=["oracle", "endpoint"])
    parser.add_argument("--teacher-base-url", default=None)
    parser.add_argument("--teacher-model", default=None)
    parser.add_argument("--gpu", action="store_true", help="Train in bf16 on the GPU.")
    parser.add_argument("--entities", type=int, default=None)
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--midtrain-entities", type=int, default=None, help="Size of the mid-training world.")
    parser.add_argument("--midtrain-epochs", type=float, default=None, help="0 skips mid-training.")
    parser.add_argument("--midtrain-lr", type=float, default=3e-3)
    parser.add_argument(
        "--copy-warmup",
        type=int,
        default=None,
        help="Copy drills before mid-training a model from scratch: at most this many steps "
        "(default 4000; 0 with --quick or --base-model).",
    )
    parser.add_argument("--sft-epochs", type=float, default=None)
    # above mid-training's last rate (3e-4) SFT first undoes what mid-training taught: at 1e-3 its step-400
    # model reached the first article in 43 of 100 held-out runs where the mid-trained one did in 68
    parser.add_argument("--sft-lr", type=float, default=None, help="default 3e-4 from scratch, else 1e-4")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT's optimizer steps of "
                        f"--tokens-per-step tokens (default: the epochs from scratch; {SFT_STEPS} from a "
                        "pretrained model, about an hour on 2 CPU cores).")  # fmt: skip
    parser.add_argument("--tokens-per-step", type=int, default=8192)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--rl-steps", type=int, default=None)
    # a higher rate moved the SmolLM2 policy far from its SFT start in one update (docs/benchmarks.md,
    # "The main job's RL settings")
    parser.add_argument("--rl-lr", type=float, default=2e-5)
    parser.add_argument("--rl-tasks", type=int, default=None, help="Tasks per RL step (default 8 from a "
                        "pretrained model, 6 from scratch, 2 with --quick), each researched --rl-group "
                        "times.")  # fmt: skip
    parser.add_argument("--rl-group", type=int, default=None, help="default 4 (2 with --quick)")
    # GRPO learns only from groups whose rollouts disagree; at a lower temperature the SFT model's rollouts
    # of a task mostly agreed (docs/benchmarks.md, "The main job's RL settings")
    parser.add_argument("--rl-temperature", type=float, default=1.0, help="RL's sampling temperature.")
    parser.add_argument("--algo", default="grpo", choices=["grpo", "ppo"])
    parser.add_argument("--bench-tasks", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None, help="Agent runs at once (default 16 on "
                        "vLLM, 2 on transformers).")  # fmt: skip
    parser.add_argument("--agent-steps", type=int, default=8)
    parser.add_argument("--agent-tokens", type=int, default=None, help="Tokens per agent run (all calls).")
    # the report track: report tasks beside the questions in SFT, RL and the benches
    parser.add_argument("--report-tasks", type=int, default=None, help="Report tasks in the world (default "
                        "500, 24 with --quick; 0: no report track).")  # fmt: skip
    parser.add_argument("--report-bench-tasks", type=int, default=None, help="Held-out report tasks benched "
                        "(default 200, 4 with --quick).")  # fmt: skip
    parser.add_argument("--report-agent-steps", type=int, default=12, help="Model calls per report run.")
    parser.add_argument("--report-agent-tokens", type=int, default=None, help="Tokens per report run.")
    parser.add_argument("--judge", default=None, choices=["trained", "rules"], help="What rewards RL's "
                        "report tasks: trained (a SmolLM2 judge trained by scripts/judge_job.py, served for "
                        "the run; its agreement with the truth is checked first) or rules (the world's true "
                        "verdicts, the upper bound). Default: trained; rules with --quick or from "
                        "scratch.")  # fmt: skip
    parser.add_argument("--judge-examples", type=int, default=140, help="The judge's training examples.")
    parser.add_argument("--rules-rl", action="store_true", help="With --judge trained, also run RL with "
                        "the report tasks rewarded by the rules (the upper bound), same seeds and steps, "
                        "benched beside it.")  # fmt: skip
    args = parser.parse_args()
    quick = args.quick
    if args.base_model is None:
        args.base_model = "scratch" if quick else "smollm2-135m"
    scratch = args.base_model == "scratch"
    if quick and args.tiny == "tiny:qwen2-mini":
        args.tiny = "tiny:qwen2"
    # one agent for every stage (teacher, bench, RL): a model call writes at most this many tokens, and a
    # search shows this many results
    os.environ.setdefault("DR_AGENT_MAX_OUTPUT_TOKENS", "384")
    os.environ.setdefault("DR_SEARCH_TOP_K", "3")
    args.entities = args.entities or (120 if quick else 1200)
    args.tasks = args.tasks or (150 if quick else 4000)
    args.sft_epochs = args.sft_epochs or (1 if quick or not scratch else 2)
    if args.sft_lr is None:
        args.sft_lr = 3e-4 if scratch else 1e-4
    if args.sft_steps is None and not quick and not scratch:
        args.sft_steps = SFT_STEPS
    args.midtrain_entities = args.midtrain_entities or (200 if quick else 50000)
    if args.midtrain_epochs is None:
        # a pretrained model skips mid-training: it can already copy and read, and its SFT is what fits
        args.midtrain_epochs = (0.2 if quick else 1) if scratch else 0
    if args.copy_warmup is None:
        args.copy_warmup = 0 if quick or not scratch else 4000
    if args.rl_steps is None:
        args.rl_steps = 1 if quick else 3 if scratch else 4
    args.rl_tasks = args.rl_tasks or (2 if quick else 6 if scratch else 8)
    args.rl_group = args.rl_group or (2 if quick else 4)
    args.bench_tasks = args.bench_tasks or (4 if quick else 100 if scratch else 200)
    args.agent_tokens = args.agent_tokens or (8000 if quick else 20000)
    if args.report_tasks is None:
        args.report_tasks = 24 if quick else 500
    args.report_bench_tasks = args.report_bench_tasks or (4 if quick else 200)
    args.report_agent_tokens = args.report_agent_tokens or (12000 if quick else 30000)
    if args.judge is None:
        # a judge trained from scratch on the little judge data would not write JSON: quick runs use rules
        args.judge = "rules" if quick or scratch else "trained"
    return args


def main() -> None:
    args = parse()
    scratch = args.base_model == "scratch"
    reports = args.report_tasks > 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    world = out / "world"
    once(world / "test.jsonl", "data", "world", "-o", world, "--seed", str(args.seed),
         "--entities", str(args.entities), "--tasks", str(args.tasks), "--max-hops", "2",
         "--report-tasks", str(args.report_tasks))  # fmt: skip
    once(out / "index", "data", "index", world / "corpus.jsonl", "-i", out / "index")
    trajectories = out / "trajectories.jsonl"
    # the training tasks the teacher researches: the questions, and the report tasks (the oracle writes a
    # cited report from the articles it opened)
    train_tasks = world / "train.jsonl"
    if reports:
        train_tasks = out / "train-all.jsonl"
        if not train_tasks.exists():
            text = (world / "train.jsonl").read_text() + (world / "reports-train.jsonl").read_text()
            train_tasks.write_text(text)
    teacher = ["--teacher", args.teacher]
    if args.teacher == "endpoint":
        teacher += ["--base-url", args.teacher_base_url or "", "--model", args.teacher_model or "",
                    "--samples", "4"]  # fmt: skip
    # --resume: an interrupted teacher's finished tasks are kept (an endpoint teacher's are costly)
    run(
        "data",
        "trajectories",
        train_tasks,
        "--index",
        out / "index",
        *teacher,
        "-o",
        trajectories,
        "--resume",
    )
    sft_data = out / "sft.jsonl"
    # no --decontaminate against the test split: the world keeps test answers out of training by
    # construction, and its questions share templates, which n-gram decontamination flags as leaks
    once(sft_data, "data", "sft", trajectories, "-o", sft_data)

    # auto is bf16 on a GPU or a CPU with AMX; the from-scratch model stays in fp32 on the
    # CPU, as the README's figures for it were measured
    precision = ["--precision", "bf16"] if args.gpu else (["--precision", "fp32"] if scratch else [])
    # Agentic mid-training text: the encyclopedia of another world (other names, other facts, so nothing
    # about the test questions is learnt by heart) plus the trajectories, every token learnt. A model from
    # scratch first does copy drills (--copy-warmup): searching and answering mean copying names and ids
    # from the context, which this little text does not teach it.
    mid_world = out / "midtrain-world"
    # (a model from scratch learns its tokenizer from it too)
    if args.midtrain_epochs or scratch:
        once(mid_world / "corpus.jsonl", "data", "world", "-o", mid_world, "--seed", str(args.seed + 1000),
             "--entities", str(args.midtrain_entities), "--tasks", "10")  # fmt: skip
    mid_data = [mid_world / "corpus.jsonl", sft_data]
    # a model a package ships (--base-model smollm2-135m) is its converted folder (dr_core.models)
    base = out / "models" / "base" if scratch else Path(resolve_model(args.base_model))
    # Every `dr train` runs with --resume: a finished run is left alone (refused if asked for with other
    # settings), an interrupted one continues from its last checkpoint, and a new one starts.
    if scratch:
        # the untrained model: random weights and a tokenizer learnt from the training text, zero steps
        run("train", "midtrain", *mid_data, "--model", args.tiny, "-o", base, "--max-steps", "0",
            "--seed", str(args.seed), "--resume")  # fmt: skip
    mid_model = out / "models" / "mid"
    if args.midtrain_epochs:
        run("train", "midtrain", *mid_data, "--model", base, "-o", mid_model, "--max-len", str(args.max_len),
            "--epochs", str(args.midtrain_epochs), "--lr", str(args.midtrain_lr), "--warmup", "50",
            "--no-grad-ckpt", "--save-every", "500", "--seed", str(args.seed), "--resume",
            "--copy-warmup", str(args.copy_warmup), *precision)  # fmt: skip
    sft_model = out / "models" / "sft"
    # from scratch: the tiny model's measured setting; a 135M model: checkpointing (3 GiB smaller than
    # without, 15% slower: docs/benchmarks.md), and a fixed number of steps of --tokens-per-step
    shape = ["--no-grad-ckpt"] if scratch else [
        "--tokens-per-step", str(args.tokens_per_step),
        *(["--max-steps", str(args.sft_steps)] if args.sft_steps else [])]  # fmt: skip
    run("train", "sft", sft_data, "--model", mid_model if args.midtrain_epochs else base, "-o", sft_model,
        "--max-len", str(args.max_len), "--epochs", str(args.sft_epochs), "--lr", str(args.sft_lr),
        "--warmup", "10", *shape, "--save-every", "50" if not scratch else "200", "--seed", str(args.seed),
        "--resume", *precision)  # fmt: skip
    rl_model = out / "models" / "rl"
    runs = [("untrained", base), *([("mid", mid_model)] if args.midtrain_epochs else []), ("sft", sft_model)]
    folders = [bench(name, model, args, out) for name, model in runs]
    report_folders = [bench("reports-sft", sft_model, args, out, reports=True)] if reports else []
    # RL's tasks: the questions, and with the report track as many report tasks (rewarded by the judge)
    rl_tasks = world / "train.jsonl"
    reward: list[str | Path] = []
    if reports:
        rl_tasks = out / "rl-tasks.jsonl"
        report_lines = (world / "reports-train.jsonl").read_text().splitlines(keepends=True)
        question_lines = (world / "train.jsonl").read_text().splitlines(keepends=True)
        if not rl_tasks.exists():
            mixed = [line for pair in zip(question_lines, report_lines, strict=False) for line in pair]
            rl_tasks.write_text("".join(mixed))
        reward = ["--reward", "rules"]
        if args.judge == "trained":
            judge_model = trained_judge(out / "judge", args)
            reward = ["--reward", "judge", "--judge-serve", judge_model]
    # a report run needs more model calls than a question's: RL's agent gets the report budget
    steps, tokens = (args.report_agent_steps, args.report_agent_tokens) if reports else (
        args.agent_steps, args.agent_tokens)  # fmt: skip

    def train_rl(folder: Path, reward: list[str | Path]) -> None:
        run("train", "rl", rl_tasks, "--model", sft_model, "--index", out / "index", *reward,
            "-o", folder, "--algo", args.algo, "--steps", str(args.rl_steps),
            "--tasks-per-step", str(args.rl_tasks), "--group", str(args.rl_group),
            "--lr", str(args.rl_lr), "--temperature", str(args.rl_temperature),
            "--max-steps", str(steps), "--max-tokens", str(tokens),
            "--concurrency", str(concurrency(sft_model, args)),
            "--save-every", "2", "--seed", str(args.seed), "--resume",
            "--engine", engine_for(sft_model, args))  # fmt: skip

    curves = [rl_model]
    if args.rl_steps:
        train_rl(rl_model, reward)
        folders.append(bench("rl", rl_model, args, out))
        if reports:
            report_folders.append(bench("reports-rl", rl_model, args, out, reports=True))
        if reports and args.rules_rl and args.judge == "trained":
            # the upper bound beside it: the same seeds and steps, the report tasks rewarded by the rules
            rules_model = out / "models" / "rl-rules"
            train_rl(rules_model, ["--reward", "rules"])
            report_folders.append(bench("reports-rl-rules", rules_model, args, out, reports=True))
            curves.append(rules_model)
        if reports:
            # the two rewards per step: what the policy trained on, and the rules' truth it never saw
            run("bench", "rewards", *curves, "--markdown", out / "rewards.md", "--plot", out / "rewards.png")
    table = out / "results.md"
    report = run("bench", "report", *folders, *report_folders, "--markdown", table)
    summaries = [json.loads(line) for line in report.splitlines() if line.strip()]
    names = [name for name, _ in runs] + (["rl"] if args.rl_steps else [])
    names += [folder.name for folder in report_folders]
    results: dict[str, Any] = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "runs": dict(zip(names, summaries, strict=True)),
    }
    if reports and args.rl_steps and args.judge == "trained":
        # the judge against the truth on the policy's own reports after RL, where hacking would show
        results["judge_on_policy"] = judge_on_policy(out, report_folders[-1], args)
    # where along each question's chain of entities the runs stopped
    chains = out / "hops.md"
    hops = run("bench", "hops", *folders, "--suite", world / "test.jsonl", "--markdown", chains)
    results["hops"] = [json.loads(line) for line in hops.splitlines() if line.strip()]
    # every two stages, question by question: the mean difference in exact-answer
    # accuracy with a 95% paired bootstrap interval (an interval that excludes 0 is a real change)
    pairs = out / "compare.md"
    compared = json.loads(run("bench", "compare", *folders, "--markdown", pairs))
    results["pairs"] = compared["pairs"]
    text = table.read_text() + "\n" + chains.read_text() + "\n" + pairs.read_text()
    if len(report_folders) > 1:
        # the held-out report tasks, task by task: after SFT against after RL (true checklist score)
        report_pairs = out / "compare-reports.md"
        results["report_pairs"] = json.loads(
            run("bench", "compare", *report_folders, "--markdown", report_pairs)
        )["pairs"]
        text += "\n" + report_pairs.read_text()
    if (out / "rewards.md").exists():
        text += "\n" + (out / "rewards.md").read_text()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    sys.stdout.write(text)
    print(f"main job: done in {results['minutes']} min; results in {table}", file=sys.stderr)


def trained_judge(folder: Path, args: argparse.Namespace) -> Path:
    """The trained checklist judge (scripts/judge_job.py: its data, SFT, and agreement with the true
    verdicts of an unseen world's reports, which it prints); its model folder."""
    model = folder / "models" / "judge"
    if not (folder / "results.md").exists():
        command = [sys.executable, str(Path(__file__).with_name("judge_job.py")), "--out", str(folder),
                   "--examples", str(args.judge_examples), "--untrained-tasks", "0",
                   "--engine", args.engine]  # fmt: skip
        print("$ " + shlex.join(command), file=sys.stderr, flush=True)
        if subprocess.run(command, check=False, preexec_fn=child_of_this_process()).returncode:
            sys.exit("main job: the judge job failed")
    return model


def judge_on_policy(out: Path, bench_folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The trained judge's verdicts on the policy's own held-out reports against the rules' (the bench's
    judgments): `dr judge score --no-checks`, then `dr judge agree`."""
    judged = out / f"judged-{bench_folder.name}.jsonl"
    judge_model = out / "judge" / "models" / "judge"
    tasks = out / "world" / "reports-test.jsonl"
    once(judged, "judge", "score", bench_folder / "trajectories.jsonl", "--tasks", tasks, "--no-checks",
         "--judge-serve", judge_model, "--concurrency", "16", "--on-error", "skip", "-o", judged)  # fmt: skip
    joined = ["--pred-key", "target_id", "--label-key", "target_id"]
    return json.loads(
        run("judge", "agree", judged, bench_folder / "judgments.jsonl", *joined, "--tasks", tasks)
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
