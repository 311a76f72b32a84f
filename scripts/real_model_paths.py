"""SmolLM2-135M-Instruct, served locally, as the reverse teacher and as the judge on the shared DeepResearch
Bench reports: how many plans pass validation (and how many needed a send-back), how many reports the
judge can score, and how its scores rank the reports against RACE's (Spearman, 95% CI).

    python scripts/real_model_paths.py --out runs/real-model             # all 80 reports
    python scripts/real_model_paths.py --out runs/real-model --limit 20  # the first 20

Each step is the `dr` command a user would type (printed to stderr); a step whose output exists is skipped.
The model's context is 8,192 tokens, so the teacher reads the first --report-chars characters of each report
and the judge grades the first --judge-chars, against --judge-batch checklist items a call (a DeepResearch
Bench checklist runs to 25-30 items, 2,500 characters of Chinese); their replies are capped
(--max-tokens, --judge-tokens), since a model this small may never close its JSON. The figures go to stdout
as JSON and to OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dr_commands import run
from served import served

from dr_core.models import resolve as resolve_model

DRB = Path(__file__).resolve().parent.parent / "data" / "deepresearch_bench"


def lines(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/real-model"))
    parser.add_argument("--model", default="smollm2-135m", help="A named model or a Hugging Face folder.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N reports.")
    parser.add_argument("--report-chars", type=int, default=3000, help="What the model reads of a report.")
    parser.add_argument("--max-tokens", type=int, default=512, help="The teacher's reply at most.")
    parser.add_argument("--judge-tokens", type=int, default=1024, help="The judge's reply at most.")
    parser.add_argument("--judge-chars", type=int, default=2000, help="What the judge reads of a report.")
    parser.add_argument("--judge-batch", type=int, default=8, help="Checklist items per judge call.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    parser.add_argument(
        "--paths", default="both", choices=["both", "teacher", "judge"], help="Which paths to run."
    )
    args = parser.parse_args()
    args.gpu = False  # served() reads it: transformers serve on the CPU where vLLM cannot serve the model
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = Path(resolve_model(args.model))

    reports = out / "reports.jsonl"
    if not reports.exists():
        every = (DRB / "reports_claude-3-7-sonnet.jsonl").read_text().splitlines(keepends=True)
        reports.write_text("".join(every[: args.limit]))
    tasks = out / "drb-tasks.jsonl"
    if not tasks.exists():
        run("bench", "import-drb", "--data", DRB, "-o", tasks)
    plans, judgments = out / "plans.jsonl", out / "judgments.jsonl"
    os.environ["DR_JUDGE_MAX_RESPONSE_CHARS"] = str(args.judge_chars)
    os.environ["DR_JUDGE_MAX_OUTPUT_TOKENS"] = str(args.judge_tokens)
    teach, judge = args.paths in ("both", "teacher"), args.paths in ("both", "judge")
    if (teach and not plans.exists()) or (judge and not judgments.exists()):
        with served(model, args, out / "serve.log") as url:
            endpoint = ["--base-url", url, "--model", str(model)]
            if teach and not plans.exists():
                run("data", "reverse", reports, "--teacher", "endpoint", *endpoint, "-o", plans,
                    "--concurrency", str(args.concurrency),
                    "--max-report-chars", str(args.report_chars),
                    "--max-tokens", str(args.max_tokens))  # fmt: skip
            if judge and not judgments.exists():
                run("judge", "score", reports, "--tasks", tasks, "--judge-base-url", url,
                    "--judge-model", str(model), "-o", judgments, "--on-error", "skip",
                    "--rejects", out / "judge-rejects.jsonl", "--batch", str(args.judge_batch),
                    "--concurrency", str(args.concurrency))  # fmt: skip

    n = len(lines(reports))
    passed = lines(plans)
    refused = lines(out / "plans.jsonl.rejects.jsonl")
    judged = lines(judgments)
    results = {
        "model": args.model,
        "reports": n,
        "report_chars": args.report_chars,
        "judge_chars": args.judge_chars,
        "judge_batch": args.judge_batch,
        "teacher": {
            "plans_passed": len(passed),
            "after_send_back": sum(p.get("meta", {}).get("teacher_attempts", 1) > 1 for p in passed),
            "refused": len(refused),
            "refusals": sorted({r.get("error", "").split(": ")[-1][:120] for r in refused})[:5],
        },
        "judge": {"judged": len(judged), "refused": len(lines(out / "judge-rejects.jsonl"))},
    }
    for path, ran in (("teacher", teach), ("judge", judge)):
        if not ran:
            del results[path]
    if judge and len(judged) >= 3:
        agree = run("judge", "agree", judgments, DRB / "race_scores_claude-3-7-sonnet.jsonl",
                    "--label-field", "overall_score")  # fmt: skip
        results["judge"]["agreement"] = json.loads(agree)
    table = [
        f"SmolLM2-135M-Instruct ({args.model}) on {n} DeepResearch Bench reports (the teacher read the "
        f"first {args.report_chars:,} characters of each, the judge the first {args.judge_chars:,}, "
        f"{args.judge_batch} checklist items a call)",
        "",
        "| path | result |",
        "|---|---|",
    ]
    if teach:
        table += [
            f"| reverse teacher: plans that passed validation | {len(passed)} of {n} "
            f"({results['teacher']['after_send_back']} after a send-back) |",
            f"| reverse teacher: reports refused after the send-backs | {len(refused)} of {n} |",
        ]
    if judge:
        table.append(f"| judge: reports scored | {len(judged)} of {n} |")
    agreement = results["judge"].get("agreement") if judge else None
    if agreement:
        rho = agreement["spearman"]
        shown = "undefined" if rho["value"] is None else f"{rho['value']:.3f}"
        low, high = (f"{v:.3f}" if v is not None else "?" for v in rho["ci95"])
        table.append(f"| judge: Spearman with RACE overall score | {shown} (95% CI {low} to {high}; "
                     f"n={agreement['n']}) |")  # fmt: skip
    (out / "results.md").write_text("\n".join(table) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
