"""`dr judge`: score responses against checklists, compare two systems, measure agreement with labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dr_core.options import Inputs, OnErrorChoice, OnErrorOpt, Output, Rejects, Resume
from dr_judge.options import JudgeKey, JudgeModel, JudgeUrl, ModeOpt, VotesOpt

app = typer.Typer(
    help="Judge reports and answers against checklists; agreement with labels.", no_args_is_help=True
)

TasksOpt = Annotated[
    Path, typer.Option("--tasks", "-t", help="Task JSONL: the questions, checklists and answers.")
]
BatchOpt = Annotated[
    int | None, typer.Option(help="Items per judge call; 0 = all at once.", show_default=False)
]
TempOpt = Annotated[float | None, typer.Option(help="Judge temperature (default: 0).", show_default=False)]


def load_tasks(path: Path) -> dict[str, Any]:
    from dr_core.jsonl import read_records
    from dr_core.records import Task

    return {task.id: task for task in read_records(str(path), Task)}


@app.command("score")
def score_command(
    inputs: Inputs = None,
    tasks: TasksOpt = ...,  # type: ignore[assignment]  # typer's mark of a required option
    output: Output = "-",
    mode: ModeOpt = None,
    votes: VotesOpt = None,
    batch: BatchOpt = None,
    temperature: TempOpt = None,
    judge_base_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    judge_api_key: JudgeKey = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Responses judged at once (default: the judge client's request cap, 8).", show_default=False
        ),
    ] = None,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
) -> None:
    """Judge responses (Trajectory, Report, or DeepResearch Bench {id, prompt, article} lines) against
    their task's checklist or reference answer; write one Judgment per response, in input order.

    Items with a deterministic check never reach the model; without a judge model, only such items (and
    exact answers) can be judged. With --on-error skip, a response the judge model gives no usable verdict
    on (after its send-backs) goes to the rejects file with the reason, and the run goes on.
    """
    from dr_core.concurrency import ordered_map
    from dr_core.errors import InputError
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_judge.build import make_judge
    from dr_judge.judge import JudgeModelError
    from dr_judge.responses import as_response

    judge = make_judge(
        judge_base_url,
        judge_model,
        judge_api_key,
        mode=mode,
        votes=votes,
        batch=batch,
        temperature=temperature,
        at_once=concurrency or 1,
    )
    known = load_tasks(tasks)
    if concurrency is None:
        concurrency = judge.llm.config.concurrency if judge.llm is not None else 1
    counts = {"judged": 0, "refused": 0}
    with Pipe(
        inputs or ["-"],
        output,
        on_error=on_error.value,
        rejects=rejects,
        resume=resume,
        output_key=lambda j: j.get("target_id"),
    ) as pipe:

        def work(response: Any) -> Any:
            task = known.get(response.task_id or "")
            if task is None:
                return None
            try:
                return judge.judge(task, response.text, response.target_id, response.citations)
            except JudgeModelError as exc:
                if pipe.on_error == "fail":
                    raise
                return exc  # no usable verdict after the send-backs: a reject, not the end of the run

        located = pipe.located(adapt=as_response, key=lambda r: r.target_id, description="judging")
        for (response, origin), result in ordered_map(lambda r: (r, work(r[0])), located, concurrency):
            if result is None:
                problem = f"response {response.target_id}: task {response.task_id!r} is not in {tasks}"
                if pipe.on_error == "fail":
                    raise InputError(problem)
                pipe.rejects.add(str(tasks), 0, problem, response.target_id.encode())
            elif isinstance(result, JudgeModelError):
                counts["refused"] += 1
                pipe.reject(origin, f"response {response.target_id}: {result}")
            else:
                counts["judged"] += 1
                pipe.write(result)
    if counts["refused"]:
        logger.warning(
            "judge: %(judged)d responses judged; %(refused)d refused by the judge model (rejects file)",
            counts,
        )


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="System A's responses (JSONL).")],
    b: Annotated[Path, typer.Argument(help="System B's responses (JSONL).")],
    tasks: TasksOpt = ...,  # type: ignore[assignment]  # typer's mark of a required option
    output: Output = "-",
    judge_base_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    judge_api_key: JudgeKey = None,
    resume: Resume = False,
) -> None:
    """Compare two systems' responses task by task with the judge model, in both orders (position swap);
    one Comparison per task both answered: win, tie or loss for A, with the rationale."""
    from dr_core.jsonl import read_records
    from dr_core.pipe import Pipe
    from dr_core.records import Comparison
    from dr_judge.build import make_judge
    from dr_judge.responses import as_response

    judge = make_judge(judge_base_url, judge_model, judge_api_key)
    known = load_tasks(tasks)
    by_task_b = {r.task_id: r for r in read_records(str(b), adapt=as_response)}
    with Pipe([str(a)], output, resume=resume, output_key=lambda c: c.get("task_id")) as pipe:
        for ra in pipe.records(adapt=as_response, key=lambda r: r.task_id, description="comparing"):
            rb = by_task_b.get(ra.task_id)
            task = known.get(ra.task_id or "")
            if rb is None or task is None:
                continue
            winner, orders, rationale = judge.compare(task.question, ra.text or "", rb.text or "")
            pipe.write(
                Comparison(
                    task_id=task.id,
                    a_id=ra.target_id,
                    b_id=rb.target_id,
                    winner=winner,
                    orders=orders,
                    rationale=rationale,
                    judge=judge.name,
                )
            )


def _field(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@app.command()
def agree(
    predictions: Annotated[Path, typer.Argument(help="The judge's output (Judgment JSONL).")],
    labels: Annotated[
        Path, typer.Argument(help="Reference labels: JSONL with a key and a score (or Judgments).")
    ],
    pred_key: Annotated[str, typer.Option(help="Field joining predictions to labels.")] = "task_id",
    label_key: Annotated[str, typer.Option(help="Field of the labels to join on.")] = "id",
    pred_field: Annotated[str, typer.Option(help="Predicted score field.")] = "score",
    label_field: Annotated[str, typer.Option(help="Label score field (dotted path allowed).")] = "score",
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Agreement of the judge with labels: Spearman and Pearson over scores, Cohen's kappa over per-item
    verdicts when the labels are Judgments too; 95% bootstrap intervals. JSON on stdout, a table on stderr."""
    import sys

    import orjson

    from dr_core.errors import InputError
    from dr_core.jsonl import read_records
    from dr_core.log import console, logger
    from dr_judge import stats

    preds = {str(_field(r, pred_key)): r for r in read_records(str(predictions))}
    labs = {str(_field(r, label_key)): r for r in read_records(str(labels))}
    shared = sorted(
        k
        for k in preds
        if k in labs and _field(preds[k], pred_field) is not None and _field(labs[k], label_field) is not None
    )
    if len(shared) < 3:
        raise InputError(f"only {len(shared)} keys are in both files with scores; agreement needs at least 3")
    x = [float(_field(preds[k], pred_field)) for k in shared]
    y = [float(_field(labs[k], label_field)) for k in shared]
    result: dict[str, Any] = {"n": len(shared)}
    intervals = {}
    for name, fn in (("spearman", stats.spearman), ("pearson", stats.pearson)):
        intervals[name] = stats.bootstrap_ci(fn, x, y, resamples=resamples, seed=seed)
    pairs = [
        (pv["verdict"], lv["verdict"])
        for k in shared
        for pv in _field(preds[k], "verdicts") or []
        for lv in _field(labs[k], "verdicts") or []
        if pv.get("item_id") == lv.get("item_id")
    ]
    if pairs:
        a, b = [p for p, _ in pairs], [q for _, q in pairs]
        intervals["kappa"] = stats.bootstrap_ci(
            lambda u, v: stats.cohen_kappa(list(u), list(v)), a, b, resamples=resamples, seed=seed
        )
    for name, interval in intervals.items():
        result[name] = {
            "value": interval.estimate,
            "ci95": [interval.low, interval.high],
            "undefined_resamples": interval.undefined,
        }
        if interval.undefined:
            logger.warning(
                "%s: undefined on %d of %d resamples (all values equal); the interval leaves them out",
                name,
                interval.undefined,
                resamples,
            )
    if pairs:
        result["kappa"]["items"] = len(pairs)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    from rich.table import Table

    table = Table(title=f"judge agreement over {len(shared)} responses")
    table.add_column("statistic")
    table.add_column("value")
    table.add_column("95% interval")
    for name in ("spearman", "pearson", "kappa"):
        if name in result:
            low, high = result[name]["ci95"]
            table.add_row(name, f"{result[name]['value']:.3f}", f"[{low:.3f}, {high:.3f}]")
    console().print(table)
