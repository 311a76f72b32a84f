"""The trained checklist judge, end to end: world report tasks → judge examples → SFT of SmolLM2-135M-Instruct
→ served by vLLM → measured against the true verdicts of an unseen world's reports, beside untrained
SmolLM2 under the same schema-constrained prompt.

    python scripts/judge_job.py --out runs/judge

Steps (each the `dr` command a user would type, printed to stderr; a step whose output exists is skipped):
1. `dr data world --seed 0` and `dr data judge` on its training report tasks: --examples whole-report
   examples (every checklist item of a report in one call, the judge's default), oracle reports and copies
   with one to four perturbations, balanced over the perturbation mix;
2. `dr train sft` of SmolLM2-135M-Instruct on them (the model folder records the judge prompt's version);
3. `dr data world --seed 7` (a seed no training data used): for --eval-tasks of its held-out report tasks,
   the oracle's report and one copy per perturbation kind (`dr data judge --reports`); the true verdicts by
   the rules (`dr judge score` without a model);
4. for the trained judge and for untrained SmolLM2: `dr serve`, `dr judge score --no-checks` (every item to
   the model), timed, and `dr judge agree` against the true verdicts.
The table goes to OUT/results.md and the figures to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from dr_commands import run
from served import served

from dr_core.models import resolve as resolve_model


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/judge"))
    parser.add_argument("--model", default="smollm2-135m", help="The base model of the judge.")
    parser.add_argument("--examples", type=int, default=280, help="Judge training examples (reports).")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-seed", type=int, default=7, help="The unseen world of the measurement.")
    parser.add_argument("--eval-tasks", type=int, default=20, help="Held-out report tasks measured.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--judge-tokens", type=int, default=1024, help="A judge reply at most.")
    parser.add_argument(
        "--untrained-tasks",
        type=int,
        default=5,
        help="Tasks whose reports untrained SmolLM2 judges (0: none).",
    )
    parser.add_argument("--engine", default="vllm", choices=["auto", "vllm", "hf"])
    args = parser.parse_args()
    args.gpu = False
    os.environ["DR_JUDGE_MAX_OUTPUT_TOKENS"] = str(args.judge_tokens)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, *command: str | Path) -> str:
        start = time.monotonic()
        text = run(*command)
        timings[name] = round(time.monotonic() - start, 1)
        return text

    world = out / "world"
    if not (world / "reports-train.jsonl").exists():
        timed("world", "data", "world", "-o", world, "--seed", "0", "--tasks", "10", "--report-tasks", "500")
    examples = out / "judge-train.jsonl"
    if not examples.exists():
        timed("judge_data", "data", "judge", world / "reports-train.jsonl", "--max-perturbations", "4",
              "--limit", str(args.examples), "--seed", "0", "-o", examples)  # fmt: skip
    model = out / "models" / "judge"
    if not (model / "trainer_state.json").exists():
        timed("judge_sft", "train", "sft", examples, "--model", args.model, "-o", model, "--max-len", "2048",
              "--lr", str(args.lr), "--warmup", "10", "--epochs", "1", "--save-every", "50",
              "--resume")  # fmt: skip

    unseen = out / f"world-{args.eval_seed}"
    if not (unseen / "reports-test.jsonl").exists():
        run("data", "world", "-o", unseen, "--seed", str(args.eval_seed), "--tasks", "10",
            "--report-tasks", str(args.eval_tasks * 4))  # fmt: skip
    tasks = out / "eval-tasks.jsonl"
    if not tasks.exists():
        held_out = (unseen / "reports-test.jsonl").read_text().splitlines(keepends=True)
        if len(held_out) < args.eval_tasks:
            raise SystemExit(f"judge job: only {len(held_out)} held-out report tasks in {unseen}")
        tasks.write_text("".join(held_out[: args.eval_tasks]))
    reports = out / "eval-reports.jsonl"
    if not reports.exists():
        run(
            "data",
            "judge",
            tasks,
            "--perturbed",
            "5",
            "--reports",
            reports,
            "-o",
            out / "eval-examples.jsonl",
        )
    truth = out / "truth.jsonl"
    if not truth.exists():
        run("judge", "score", reports, "--tasks", tasks, "-o", truth)

    # untrained SmolLM2 writes long rationales: it judges the reports of the first --untrained-tasks
    first = out / "eval-reports-untrained.jsonl"
    if args.untrained_tasks and not first.exists():
        keep = {t["id"] for t in lines(tasks)[: args.untrained_tasks]}
        first.write_text("".join(json.dumps(r) + "\n" for r in lines(reports) if r["task_id"] in keep))
    # the trained judge takes a report's items in one call, as it learnt; untrained SmolLM2 five at a time,
    # so that its replies (rationales of up to 200 characters) fit in --judge-tokens
    judges = [("trained", model, reports, 0)]
    if args.untrained_tasks:
        judges.append(("untrained", Path(resolve_model(args.model)), first, 5))
    results: dict[str, dict] = {}
    joined = ["--pred-key", "target_id", "--label-key", "target_id"]
    for name, folder, judging, batch in judges:
        judged = out / f"judged-{name}.jsonl"
        record = out / f"judged-{name}.json"
        ids = {r["id"] for r in lines(judging)}
        items = sum(len(r["verdicts"]) for r in lines(truth) if r["target_id"] in ids)
        if not judged.exists():
            with served(folder, args, out / f"serve-{name}.log") as url:
                start = time.monotonic()
                run("judge", "score", judging, "--tasks", tasks, "--no-checks", "--judge-base-url", url,
                    "--judge-model", str(folder), "--concurrency", str(args.concurrency),
                    "--batch", str(batch), "--on-error", "skip", "--rejects", out / f"rejects-{name}.jsonl",
                    "-o", judged)  # fmt: skip
                seconds = time.monotonic() - start
            record.write_text(json.dumps({"seconds": round(seconds, 1), "items": items}) + "\n")
        cost = json.loads(record.read_text())
        agreement = json.loads(run("judge", "agree", judged, truth, *joined, "--tasks", tasks))
        rejected = out / f"rejects-{name}.jsonl"
        results[name] = {
            "agreement": agreement,
            "refused_reports": len(lines(rejected)) if rejected.exists() else 0,
            "seconds": cost["seconds"],
            "items_per_s": round(cost["items"] / cost["seconds"], 2),
            "items_per_call": batch or "all",
        }
    rules = json.loads(run("judge", "agree", truth, truth, *joined, "--tasks", tasks, "--resamples", "200"))
    table = markdown(results, rules, len(lines(reports)), sum(len(r["verdicts"]) for r in lines(truth)), args)
    (out / "results.md").write_text(table)
    print(json.dumps({"timings_s": timings, "results": results}, indent=2))


def cell(stat: dict | None) -> str:
    if not stat:
        return "-"
    low, high = stat["ci95"]
    return f"{stat['value']:.3f} ({low:.3f}-{high:.3f})"


def markdown(results: dict, rules: dict, reports: int, items: int, args: argparse.Namespace) -> str:
    lines_out = [
        f"Checklist judges against the true verdicts of {reports} reports ({items} items) on "
        f"{args.eval_tasks} held-out report tasks of world seed {args.eval_seed}: the oracle's report and "
        "one copy per perturbation kind. Every item is sent to the model (`--no-checks`); 95% intervals "
        "over reports.",
        "",
        "| judge | rows | reports | items | accuracy | kappa | abstained | score abs. error |",
        "|---|---|---:|---:|---|---|---:|---|",
    ]

    def row(judge: str, name: str, stats: dict) -> None:
        lines_out.append(
            f"| {judge} | {name} | {stats['responses']} | {stats['items']} | {cell(stats.get('accuracy'))} | "
            f"{cell(stats.get('kappa'))} | {stats['abstained']} | {cell(stats.get('score_abs_error'))} |"
        )

    row("the rules (ceiling)", "all", rules["verdicts"])
    for judge, result in results.items():
        agreement = result["agreement"]
        if "verdicts" not in agreement:
            lines_out.append(f"| {judge} | all | 0 | 0 | - | - | - | - |")
            continue
        row(judge, "all", agreement["verdicts"])
        for name, stats in agreement["by_group"].items():
            row(judge, f"reports: {name}", stats)
        for name, stats in agreement["by_item_category"].items():
            row(judge, f"items: {name}", stats)
    lines_out += [
        "",
        "| judge | items a call | reports refused | wall s | items/s |",
        "|---|---|---:|---:|---:|",
    ]
    for judge, result in results.items():
        lines_out.append(
            f"| {judge} | {result['items_per_call']} | {result['refused_reports']} | {result['seconds']} | "
            f"{result['items_per_s']} |"
        )
    return "\n".join(lines_out) + "\n"


if __name__ == "__main__":
    main()
