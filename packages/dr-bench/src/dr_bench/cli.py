"""`dr bench`: run suites, report scores, compare systems."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from dr_agent.flags import AgentFlags
from dr_core.config_cli import with_flags
from dr_core.files import write_atomic
from dr_core.log import logger
from dr_core.options import Output, Resume
from dr_judge.flags import JudgeFlags

app = typer.Typer(help="Benchmark agents on research and deep-search suites.", no_args_is_help=True)

DrbDir = Annotated[Path, typer.Option(help="The DeepResearch Bench folder (query.jsonl, criteria.jsonl).")]


class OnChange(StrEnum):
    refuse = "refuse"
    set_aside = "set-aside"


def _needs_model(task: Any) -> bool:
    if task.answer is not None and (task.type == "deep_search" or not task.checklist):
        return False
    return any(item.check is None for item in task.checklist)


@app.command()
@with_flags(JudgeFlags, "judge_flags")
@with_flags(AgentFlags, "agent_flags")
def run(
    suite: Annotated[
        str,
        typer.Option(
            help="Task JSONL file; 'drb' (DeepResearch Bench); or world:SEED[:ENTITIES[:TASKS]], the "
            "synthetic world's test split (its index is built beside the run unless --index is given)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: trajectories, judgments, summary.")],
    concurrency: Annotated[int, typer.Option(help="Tasks run at once.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Only the first N tasks.", show_default=False)] = None,
    resume: Resume = False,
    drb_dir: DrbDir = Path("data/deepresearch_bench"),
    serve: Annotated[
        str | None,
        typer.Option(
            help="A model folder to serve for the run (on a free loopback port, stopped at the end; its log "
            "in OUT/serve.log) instead of --base-url/--model.",
            show_default=False,
        ),
    ] = None,
    serve_engine: Annotated[
        str, typer.Option(help="With --serve: auto (vLLM where it can serve the model), vllm, transformers.")
    ] = "auto",
    on_change: Annotated[
        OnChange,
        typer.Option(
            help="With --resume, when OUT holds a run of another setup (model, agent settings, index, judge "
            "or tasks): refuse, or set-aside (move it to OUT.stale-N, never deleted, and start afresh).",
        ),
    ] = OnChange.refuse,
    agent_flags: AgentFlags | None = None,
    judge_flags: JudgeFlags | None = None,
) -> None:
    """Run the agent on every task of a suite, judge each trajectory, and summarize. Stop it any time:
    --resume skips tasks already run (and judges any left unjudged), and does nothing when OUT already holds
    the finished run of this setup. The summary goes to stdout as JSON."""
    import contextlib

    import orjson

    from dr_bench.report import print_table
    from dr_bench.runner import COMMAND, resume_check, resume_command, run_suite, setup_of
    from dr_bench.suites import load_suite
    from dr_core.errors import InputError

    assert agent_flags is not None and judge_flags is not None
    if serve is not None and (agent_flags.base_url or agent_flags.model):
        raise InputError("--serve serves the model here: drop --base-url/--model, or --serve")
    server = None
    if serve is not None:
        from dr_core.models import resolve
        from dr_core.serving import managed

        # not started yet: a finished run needs no server
        server, model = managed(resolve(serve), serve_engine, log=out / "serve.log", what="--serve")
        agent_flags = agent_flags.model_copy(update={"base_url": f"{server.url}/v1", "model": model})
    tasks = load_suite(suite, drb_dir)[:limit]
    agent, judge = _agent_and_judge(suite, tasks, out, concurrency, agent_flags, judge_flags)
    setup = setup_of(tasks, agent, judge)
    if resume:
        found = resume_check(out, setup, "set-aside" if on_change is OnChange.set_aside else "refuse")
        if found.done is not None:
            logger.info("%s already holds the finished run of this setup: nothing to run", out)
            print_table([found.done])
            sys.stdout.buffer.write(orjson.dumps(found.done) + b"\n")
            return
        resume = found.set_aside is None
    out.mkdir(parents=True, exist_ok=True)
    with server if server is not None else contextlib.nullcontext():
        write_atomic(out / COMMAND, resume_command(sys.argv) + "\n")  # what `dr bench report` names to resume
        summary = run_suite(tasks, agent, judge, out, concurrency=concurrency, resume=resume, setup=setup)
    print_table([summary])
    sys.stdout.buffer.write(orjson.dumps(summary) + b"\n")


def _agent_and_judge(
    suite: str,
    tasks: list[Any],
    out: Path,
    concurrency: int,
    agent_flags: AgentFlags,
    judge_flags: JudgeFlags,
) -> tuple[Any, Any]:
    """The agent and the judge of a `dr bench run` of `tasks` (a world suite's index is built beside OUT)."""
    from dr_bench.suites import parse_world
    from dr_core.errors import ConfigError

    world = parse_world(suite)
    if world is not None and agent_flags.index is None and agent_flags.search is None:
        agent_flags = agent_flags.model_copy(update={"index": _world_index(world, out)})
    judge = judge_flags.judge(at_once=concurrency)
    if judge.llm is None and any(_needs_model(t) for t in tasks):
        raise ConfigError(
            "these tasks have checklist items without deterministic checks: give a judge model "
            "(--judge-base-url/--judge-model or DR_JUDGE_LLM_*)"
        )
    return agent_flags.agent(runs_at_once=concurrency), judge


def _world_index(world: tuple[int, int, int], out: Path) -> Path:
    """The search index over a built-in world's corpus, built once beside the run."""
    from dr_agent.index import build_index
    from dr_bench.suites import world_suite

    seed, entities, tasks = world
    index = out.parent / f".world-{seed}-{entities}-{tasks}-index"
    if not (index / "index.json").exists():
        build_index(world_suite(seed, entities, tasks)[1], index)
    return index


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or judgments files).")],
    markdown: Annotated[Path | None, typer.Option(help="Also write a markdown table here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw scores (overall and by category) to this PNG.")
    ] = None,
) -> None:
    """Mean scores with 95% bootstrap intervals, per-category breakdown and cost, one JSON line per run."""
    import orjson

    from dr_bench import report as reports

    summaries = [reports.summarize(run) for run in runs]
    if len(runs) > 1:
        reports.warn_if_setups_differ(runs)
    reports.print_table(summaries)
    if markdown is not None:
        write_atomic(markdown, reports.markdown(summaries))
    if plot is not None:
        reports.plot(summaries, plot)
    for summary in summaries:
        sys.stdout.buffer.write(orjson.dumps(summary) + b"\n")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (or judgments files).")],
    margin: Annotated[float, typer.Option(help="Score differences up to this count as ties.")] = 0.02,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 1000,
    markdown: Annotated[Path | None, typer.Option(help="Also write markdown tables here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the Elo ratings with intervals to this PNG.")
    ] = None,
) -> None:
    """Task-by-task comparison: win / tie / loss for every pair (win rate = (win + 0.5 tie) / n), the mean
    per-task score difference A - B with a 95% paired bootstrap interval, and, across all systems,
    Bradley-Terry ratings on the Elo scale with 95% intervals. JSON on stdout."""
    import orjson

    from dr_bench.rating import paired_difference, pairwise, ratings
    from dr_bench.report import load_judgments
    from dr_core.errors import InputError
    from dr_core.log import console

    if len(runs) < 2:
        raise InputError("compare needs at least two runs")
    from dr_bench.report import warn_if_setups_differ

    warnings = warn_if_setups_differ(runs)
    scores = [
        {j.task_id or j.target_id: j.score for j in load_judgments(run) if j.score is not None}
        for run in runs
    ]
    names = [str(run) for run in runs]
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            pairs.append(
                {
                    "a": names[i],
                    "b": names[j],
                    **pairwise(scores[i], scores[j], margin),
                    **paired_difference(scores[i], scores[j], resamples),
                }
            )
    rated = ratings(scores, margin, resamples)
    result: dict[str, Any] = {
        "pairs": pairs,
        "ratings": [{"run": n, **r} for n, r in zip(names, rated, strict=True)],
    }
    if warnings:
        result["setup_differences"] = warnings
    from rich.table import Table

    table = Table(title="pairwise (A vs B)")
    for column in ("A", "B", "n", "win", "tie", "loss", "win rate", "A - B (95% CI)"):
        table.add_column(column)
    lines = [
        "| A | B | n | win | tie | loss | win rate | A - B (95% paired CI) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in pairs:
        diff = (
            "none"
            if p["diff"] is None
            else f"{p['diff']:+.3f} ({p['diff_ci95'][0]:+.3f} to {p['diff_ci95'][1]:+.3f})"
        )
        cells = [
            p["a"],
            p["b"],
            str(p["n"]),
            str(p["win"]),
            str(p["tie"]),
            str(p["loss"]),
            f"{p['win_rate']:.3f}",
            diff,
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console().print(table)
    lines += ["", "| run | Elo | 95% CI |", "|---|---:|---|"]
    for r in result["ratings"]:
        if r["elo"] is None:
            text = ("none", "shares no task with another run")
        else:
            text = (f"{r['elo']:.0f}", f"{r['ci95'][0]:.0f}-{r['ci95'][1]:.0f}")
        lines.append(f"| {r['run']} | {text[0]} | {text[1]} |")
        console().print(f"{r['run']}: Elo {text[0]} ({text[1]}, {r['games']} games)")
    if markdown is not None:
        write_atomic(markdown, "\n".join(lines) + "\n")
    if plot is not None:
        from dr_bench.report import plot_ratings

        plot_ratings([r for r in result["ratings"] if r["elo"] is not None], plot)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


@app.command()
def hops(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or trajectories files).")],
    suite: Annotated[
        str, typer.Option(help="The suite the runs ran: a task JSONL file or world:SEED[:ENTITIES[:TASKS]].")
    ],
    markdown: Annotated[Path | None, typer.Option(help="Also write a markdown table here.")] = None,
) -> None:
    """Where multi-hop runs stop: for each hop of each task (its meta.hops), whether a search query named
    the hop's entity, a search listed its document, and it was opened. One JSON line per run."""
    import orjson
    from rich.table import Table

    from dr_bench import hops as chains
    from dr_bench.suites import load_suite
    from dr_core.log import console

    tasks = {task.id: task for task in load_suite(suite)}
    results = [chains.progress(run, tasks) for run in runs]
    table = Table(title="progress along the chain (runs that reached each step)")
    table.add_column("step")
    for run in runs:
        table.add_column(str(run))
    for row in chains.rows(results):
        table.add_row(*row)
    console().print(table)
    if markdown is not None:
        write_atomic(markdown, chains.markdown(results))
    for result in results:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


@app.command()
def rewards(
    runs: Annotated[
        list[Path], typer.Argument(help="`dr train rl` output folders (or metrics.jsonl files).")
    ],
    markdown: Annotated[Path | None, typer.Option(help="Also write a markdown table here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the judge's reward and the truth per step to this PNG.")
    ] = None,
) -> None:
    """RL reward curves: per step, the reward the policy trained on, the rules' truth on report tasks (never
    shown to the policy), their gap, flaw and fatal rates; one JSON line per run and step."""
    import orjson

    from dr_bench import rewards as curves

    loaded = {str(run): curves.load_steps(run) for run in runs}
    if markdown is not None:
        write_atomic(markdown, curves.markdown(loaded))
    if plot is not None:
        curves.plot(loaded, plot)
    for name, steps in loaded.items():
        for step in steps:
            sys.stdout.buffer.write(orjson.dumps({"run": name, **step}) + b"\n")


@app.command("import-drb")
def import_drb_command(
    data: DrbDir = Path("data/deepresearch_bench"),
    output: Output = "-",
) -> None:
    """DeepResearch Bench as a suite of Task records: its RACE criteria become weighted checklist items."""
    from dr_bench.suites import import_drb
    from dr_core.jsonl import RecordWriter

    with RecordWriter(output) as writer:
        for task in import_drb(data):
            writer.write(task)
