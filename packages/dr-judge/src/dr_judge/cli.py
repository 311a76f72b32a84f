"""`dr judge`: score responses against checklists, compare two systems, measure agreement with labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dr_core.config_cli import with_flags
from dr_core.options import Inputs, OnErrorChoice, OnErrorOpt, Output, Rejects, Resume
from dr_judge.flags import JudgeEndpoint, ScoreFlags

app = typer.Typer(
    help="Judge reports and answers against checklists; agreement with labels.", no_args_is_help=True
)

TasksOpt = Annotated[
    Path, typer.Option("--tasks", "-t", help="Task JSONL: the questions, checklists and answers.")
]


def load_tasks(path: Path) -> dict[str, Any]:
    from dr_core.jsonl import read_records
    from dr_core.records import Task

    return {task.id: task for task in read_records(str(path), Task)}


def _serve_judge(stack: Any, folder: str, endpoint: str | None, output: str) -> tuple[str, str]:
    """Serve the judge model in `folder` until `stack` closes; (its base URL, the model name to ask for).
    `endpoint`: the --judge-base-url or --judge-model given beside it, refused."""
    import tempfile

    from dr_core.errors import InputError
    from dr_core.log import logger
    from dr_core.models import resolve
    from dr_core.serving import managed

    if endpoint:
        raise InputError("--judge-serve serves the judge here: drop --judge-base-url/--judge-model, or it")
    if output == "-":
        log = Path(tempfile.mkdtemp(prefix="dr-judge-serve-")) / "serve.log"
    else:
        log = Path(f"{output}.judge-serve.log")
    server, model = managed(resolve(folder), log=log, what="--judge-serve")
    logger.info("serving the judge %s (log: %s)", folder, log)
    stack.enter_context(server)
    return f"{server.url}/v1", model


@app.command("score")
@with_flags(ScoreFlags, "flags")
def score_command(
    inputs: Inputs = None,
    tasks: TasksOpt = ...,  # type: ignore[assignment]  # typer's mark of a required option
    output: Output = "-",
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Responses judged at once (default: the judge client's request cap, 8).", show_default=False
        ),
    ] = None,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
    judge_serve: Annotated[
        str | None,
        typer.Option(
            help="A judge model folder to serve for the run instead of --judge-base-url/--judge-model: vLLM "
            "where it can serve it, else transformers serve, on a free loopback port, stopped at the end; "
            "its log beside -o (OUTPUT.judge-serve.log).",
            show_default=False,
        ),
    ] = None,
    flags: ScoreFlags | None = None,
) -> None:
    """Judge responses (Trajectory, Report, or DeepResearch Bench {id, prompt, article} lines) against
    their task's checklist or reference answer; write one Judgment per response, in input order.

    Items with a deterministic check never reach the model; without a judge model, only such items (and
    exact answers) can be judged. With --on-error skip, a response the judge model gives no usable verdict
    on (after its send-backs) goes to the rejects file with the reason, and the run goes on.
    """
    import contextlib

    from dr_core.concurrency import ordered_map
    from dr_core.errors import InputError
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_judge.judge import JudgeModelError
    from dr_judge.responses import as_response

    assert flags is not None
    with contextlib.ExitStack() as stack:
        if judge_serve is not None:
            url, model = _serve_judge(stack, judge_serve, flags.judge_base_url or flags.judge_model, output)
            flags = flags.model_copy(update={"judge_base_url": url, "judge_model": model})
        judge = flags.judge(at_once=concurrency or 1)
        known = load_tasks(tasks)
        if concurrency is None:
            concurrency = judge.llm.config.concurrency if judge.llm is not None else 1
        counts = {"judged": 0, "refused": 0, "abstained": 0}
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
                    judgment = judge.judge(task, response.text, response.target_id, response.citations)
                    if response.meta:
                        judgment.meta = {**response.meta, **judgment.meta}
                    return judgment
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
                    counts["abstained"] += sum(v.verdict == "abstain" for v in result.verdicts)
                    pipe.write(result)
        if counts["refused"]:
            logger.warning(
                "judge: %(judged)d responses judged; %(refused)d refused by the judge model (rejects file)",
                counts,
            )
        if counts["abstained"]:
            logger.warning(
                "judge: abstained on %(abstained)d items (reply cut off, or response cut for grading); a "
                "response with an abstention has no score",
                counts,
            )


@app.command()
@with_flags(JudgeEndpoint, "endpoint")
def compare(
    a: Annotated[Path, typer.Argument(help="System A's responses (JSONL).")],
    b: Annotated[Path, typer.Argument(help="System B's responses (JSONL).")],
    tasks: TasksOpt = ...,  # type: ignore[assignment]  # typer's mark of a required option
    output: Output = "-",
    resume: Resume = False,
    endpoint: JudgeEndpoint | None = None,
) -> None:
    """Compare two systems' responses task by task with the judge model, in both orders (position swap);
    one Comparison per task both answered: win, tie or loss for A, with the rationale."""
    from dr_core.jsonl import read_records
    from dr_core.pipe import Pipe
    from dr_core.records import Comparison
    from dr_judge.responses import as_response

    assert endpoint is not None
    judge = endpoint.judge()
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
        Path,
        typer.Argument(
            help="Reference labels: Judgments (true verdicts, as `dr judge score` without a model writes "
            "them from rule checks), or JSONL with a key and a score (human or RACE scores)."
        ),
    ],
    pred_key: Annotated[str, typer.Option(help="Field joining predictions to labels.")] = "task_id",
    label_key: Annotated[str, typer.Option(help="Field of the labels to join on.")] = "id",
    pred_field: Annotated[str, typer.Option(help="Predicted score field.")] = "score",
    label_field: Annotated[str, typer.Option(help="Label score field (dotted path allowed).")] = "score",
    by: Annotated[
        str,
        typer.Option(help="Field of the predictions that groups responses (dotted path), reported apart."),
    ] = "meta.perturbation",
    tasks: Annotated[
        Path | None,
        typer.Option("--tasks", "-t", help="Task JSONL: agreement per checklist item category too."),
    ] = None,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples for the intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Agreement of the judge with labels, with 95% bootstrap intervals. JSON on stdout, a table on stderr.

    Against labels that are Judgments with verdicts (the world's true verdicts): per-item accuracy and
    Cohen's kappa over the items both ruled on, the judge's abstentions counted apart, and the
    report-level score error (mean absolute, and bias); overall, per response group (--by: a report's
    perturbation) and per item category (--tasks). Intervals draw whole responses. Over scores (any
    labels): Spearman and Pearson, on responses both sides scored."""
    import sys

    import orjson

    from dr_core.errors import InputError
    from dr_core.jsonl import read_records
    from dr_core.log import console
    from dr_judge import stats
    from dr_judge.agreement import Pairing, by_group, verdict_agreement

    preds = {str(_field(r, pred_key)): r for r in read_records(str(predictions))}
    labs = {str(_field(r, label_key)): r for r in read_records(str(labels))}
    shared = sorted(k for k in preds if k in labs)
    if not shared:
        raise InputError(
            f"no {pred_key} of {predictions} is a {label_key} of {labels}: give --pred-key/--label-key"
        )
    categories: dict[str, dict[str, str]] = {}
    if tasks is not None:
        for task in load_tasks(tasks).values():
            categories[task.id] = {item.id: item.category or "" for item in task.checklist}
    result: dict[str, Any] = {"n": len(shared)}
    pairings = []
    for key in shared:
        pred, lab = preds[key], labs[key]
        true = {v.get("item_id"): v.get("verdict") for v in _field(lab, "verdicts") or []}
        items = [
            (str(v.get("item_id")), str(v.get("verdict")), str(true[v.get("item_id")]))
            for v in _field(pred, "verdicts") or []
            if v.get("item_id") in true
        ]
        if items:
            pairings.append(
                Pairing(
                    key,
                    items,
                    _number(_field(pred, pred_field)),
                    _number(_field(lab, label_field)),
                    group=str(_field(pred, by) or ""),
                    item_groups=categories.get(str(pred.get("task_id")), {}),
                )
            )
    if pairings:
        result["verdicts"] = verdict_agreement(pairings, resamples, seed)
        result["by_group"], result["by_item_category"] = by_group(pairings, resamples, seed)
    scored = [
        k
        for k in shared
        if _number(_field(preds[k], pred_field)) is not None
        and _number(_field(labs[k], label_field)) is not None
    ]
    if len(scored) >= 3:
        x = [float(_field(preds[k], pred_field)) for k in scored]
        y = [float(_field(labs[k], label_field)) for k in scored]
        for name, fn in (("spearman", stats.spearman), ("pearson", stats.pearson)):
            interval = stats.bootstrap_ci(fn, x, y, resamples=resamples, seed=seed)
            result[name] = {
                "value": interval.estimate,
                "ci95": [interval.low, interval.high],
                "n": len(scored),
                "undefined_resamples": interval.undefined,
            }
    if not pairings and len(scored) < 3:
        raise InputError(
            f"only {len(scored)} responses are scored in both files and none has verdicts to compare; "
            "agreement needs at least 3 scores or verdicts"
        )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    console().print(_agreement_table(result))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _agreement_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    def cell(stat: dict[str, Any] | None) -> str:
        if not stat:
            return "-"
        low, high = stat["ci95"]
        return f"{stat['value']:.3f} [{low:.3f}, {high:.3f}]"

    table = Table(title=f"judge agreement over {result['n']} responses")
    for column in ("rows", "responses", "items", "accuracy", "kappa", "abstained", "score |error|"):
        table.add_column(column)
    rows = []
    if "verdicts" in result:
        rows.append(("all", result["verdicts"]))
        rows += [(f"{name}", stats) for name, stats in result["by_group"].items()]
        rows += [(f"items: {name}", stats) for name, stats in result["by_item_category"].items()]
    for name, stats in rows:
        table.add_row(
            name,
            str(stats["responses"]),
            str(stats["items"]),
            cell(stats.get("accuracy")),
            cell(stats.get("kappa")),
            str(stats["abstained"]),
            cell(stats.get("score_abs_error")),
        )
    for name in ("spearman", "pearson"):
        if name in result:
            table.add_row(name, str(result[name]["n"]), "", cell(result[name]), "", "", "")
    return table
