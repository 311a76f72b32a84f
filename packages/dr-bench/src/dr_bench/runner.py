"""`dr bench run`: the agent on every task of a suite, each trajectory judged, all of it resumable.

A run folder holds trajectories.jsonl and judgments.jsonl (each written as it goes, flushed per record),
setup.json (what decides its scores: the fingerprint and the tasks, written as it starts) and summary.json.
Resuming skips tasks whose trajectory is already there, and judges trajectories that were written but not
yet judged. It only continues a run of the same setup: `resume_check` says what changed, and the caller
refuses or sets the old folder aside; a finished run of the same setup is left as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from dr_core.concurrency import completed_map
from dr_core.errors import InputError, LLMError
from dr_core.files import write_atomic
from dr_core.jsonl import RecordWriter, read_records
from dr_core.log import logger, progress
from dr_core.records import Judgment, Task, Trajectory

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent
    from dr_judge.judge import ChecklistJudge

TRAJECTORIES = "trajectories.jsonl"
JUDGMENTS = "judgments.jsonl"
SUMMARY = "summary.json"
COMMAND = "command.txt"  # the `dr bench run` command that resumes the run, secrets left out
SETUP = "setup.json"
OnChange = Literal["refuse", "set-aside"]

# Flags whose value is a secret: never written into the run folder.
SECRET_FLAGS = ("--api-key", "--judge-api-key")


def resume_command(argv: list[str]) -> str:
    """The command line of this `dr bench run` with --resume (added when missing), quoted for a shell;
    secret values are replaced by a variable, and passwords in URLs and anything that looks like a key by
    `***` (dr_core.log.scrub)."""
    import shlex

    from dr_core.log import scrub

    words = ["dr", *argv[1:]]
    shown: list[str] = []
    hide = False
    for word in words:
        if hide:
            shown.append('"$KEY"')
            hide = False
            continue
        flag, _, value = word.partition("=")
        if flag in SECRET_FLAGS:
            if value:
                shown.append(f'{flag}="$KEY"')
            else:
                shown.append(flag)
                hide = True
            continue
        shown.append(shlex.quote(scrub(word)))
    if "--resume" not in words:
        shown.append("--resume")
    return " ".join(shown)


def setup_of(tasks: list[Task], agent: ResearchAgent, judge: ChecklistJudge) -> dict[str, Any]:
    """What decides a run's scores: its fingerprint (the model, the agent's settings and tools, the index,
    the judge) and its tasks (a digest of their ids, in order)."""
    from dr_bench.fingerprint import fingerprint

    ids = json.dumps([task.id for task in tasks]).encode()
    return {
        "fingerprint": fingerprint(agent, judge),
        "tasks": hashlib.sha256(ids).hexdigest()[:12],
        "n_tasks": len(tasks),
    }


def recorded_setup(out: Path) -> dict[str, Any] | None:
    """The setup the run in `out` recorded (setup.json; a run of an older dr: its summary's fingerprint)."""
    from dr_bench.report import load_fingerprint

    path = out / SETUP
    if path.is_file():
        try:
            return dict(orjson.loads(path.read_bytes()))
        except orjson.JSONDecodeError:
            return None
    before = load_fingerprint(out)
    return {"fingerprint": before} if before else None


def setup_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two setups, one line each (the model included: a run continues one model)."""
    from dr_bench.fingerprint import differences

    old, new = before.get("fingerprint") or {}, now["fingerprint"]
    lines = [
        f"{key}: {old.get(key)} then, {new.get(key)} now"
        for key in ("model", "chat_template")
        if old.get(key) != new.get(key)
    ]
    if old.get("digest") != new.get("digest"):
        lines += differences({"then": old, "now": new}) or ["the agent or judge setup"]
    if "tasks" in before and before["tasks"] != now["tasks"]:
        lines.append(f"tasks: {before.get('n_tasks')} then, {now['n_tasks']} now (another suite or --limit)")
    return lines


@dataclass
class Resumed:
    """What `--resume` found in a run folder."""

    done: dict[str, Any] | None  # the summary of a finished run of the same setup: nothing to do
    set_aside: Path | None  # where a run of another setup was moved


def resume_check(out: Path, setup: dict[str, Any], on_change: OnChange = "refuse") -> Resumed:
    """Before `--resume` continues the run in `out`: a run recorded with another setup is refused
    (InputError naming what changed) or, with `set-aside`, moved to OUT.stale-N (never deleted) so that
    the run starts afresh; a finished run of this setup (its summary counts no failed task) is done."""
    before = recorded_setup(out) if out.is_dir() else None
    if before is not None:
        changes = setup_changes(before, setup)
        if changes:
            if on_change == "refuse":
                raise InputError(
                    f"--resume: {out} holds a run of another setup ({'; '.join(changes)}); run it in "
                    "another folder, or give --on-change set-aside to move it aside and start afresh"
                )
            n = 1
            while (aside := out.with_name(f"{out.name}.stale-{n}")).exists():
                n += 1
            out.rename(aside)
            logger.warning("--resume: %s was run with another setup (%s); moved to %s", out,
                           "; ".join(changes), aside)  # fmt: skip
            return Resumed(None, aside)
    summary_path = out / SUMMARY
    if before is not None and summary_path.is_file():
        try:
            summary = orjson.loads(summary_path.read_bytes())
        except orjson.JSONDecodeError:
            return Resumed(None, None)
        if not summary.get("failed") and "tasks" in before:
            return Resumed(summary, None)
    return Resumed(None, None)


def run_suite(
    tasks: list[Task],
    agent: ResearchAgent,
    judge: ChecklistJudge,
    out: Path,
    *,
    concurrency: int = 4,
    resume: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    setup: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run and judge every task; returns the summary (also written to out/summary.json). With `resume`,
    call `resume_check` first: this continues whatever run `out` holds."""
    from dr_bench.report import summarize

    out.mkdir(parents=True, exist_ok=True)
    setup = setup or setup_of(tasks, agent, judge)
    now = setup["fingerprint"]
    write_atomic(out / SETUP, orjson.dumps(setup, option=orjson.OPT_INDENT_2))
    by_id = {task.id: task for task in tasks}
    traj_writer = RecordWriter(
        out / TRAJECTORIES, resume=resume, key=lambda r: r.get("task_id"), flush_interval_s=0
    )
    judg_writer = RecordWriter(
        out / JUDGMENTS, resume=resume, key=lambda r: r.get("task_id"), flush_interval_s=0
    )
    failures: list[str] = []
    with traj_writer, judg_writer:
        # written but never judged (the run was stopped in between): judge them now
        unjudged = traj_writer.done - judg_writer.done
        if unjudged:
            for trajectory in read_records(str(out / TRAJECTORIES), Trajectory):
                if trajectory.task_id in unjudged and trajectory.task_id in by_id:
                    judg_writer.write(_judge(judge, by_id[trajectory.task_id], trajectory))
                    unjudged.discard(trajectory.task_id)
        todo = [task for task in tasks if task.id not in traj_writer.done]
        if traj_writer.done:
            logger.info("resuming: %d of %d tasks already run", len(tasks) - len(todo), len(tasks))

        def work(task: Task) -> tuple[Trajectory, Judgment | None]:
            trajectory = agent.run(task.question, task_id=task.id, on_event=on_event)
            if trajectory.stop_reason == "error":
                return trajectory, None
            return trajectory, _judge(judge, task, trajectory)

        finished = progress(completed_map(work, todo, concurrency), "bench", total=len(todo))
        for task, (trajectory, judgment) in finished:
            if judgment is None:
                # a failed run (endpoint down, context overflow) is not a result: it reruns on resume
                failures.append(f"{task.id}: {trajectory.meta.get('error')}")
                continue
            traj_writer.write(trajectory)
            judg_writer.write(judgment)
    summary = summarize(out)
    summary["failed"] = len(failures)
    summary["fingerprint"] = now
    write_atomic(out / SUMMARY, orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if failures:
        shown = "; ".join(failures[:3])
        raise LLMError(f"{len(failures)} of {len(todo)} tasks failed (rerun with --resume): {shown}")
    return summary


def _judge(judge: ChecklistJudge, task: Task, trajectory: Trajectory) -> Judgment:
    judgment = judge.judge(task, trajectory.final, trajectory.id, trajectory.citations)
    return judgment.model_copy(
        update={
            "meta": {
                **judgment.meta,
                **report_figures(task, judgment, trajectory),
                "category": task.category,
                "language": task.language,
                "steps": trajectory.steps,
                "tool_calls": trajectory.meta.get("tool_calls", 0),
                "tokens": trajectory.usage.total_tokens,
                "cost_usd": trajectory.usage.cost_usd,
                "wall_s": trajectory.wall_s,
                "stop_reason": trajectory.stop_reason,
            }
        }
    )


def report_figures(task: Task, judgment: Judgment, trajectory: Trajectory) -> dict[str, Any]:
    """For a report judged on a checklist: the flaw items found present (fatal ones apart: Judgment.fatal),
    the sources it cites, and the share of them among the task's allowed sources (its `cites_outside`
    item's list: the articles its facts come from), None when it cites none or the task allows any."""
    if judgment.mode == "exact" or not task.checklist:
        return {}
    from dr_judge.checks import cited

    present = {v.item_id for v in judgment.verdicts if v.verdict in ("met", "partially_met")}
    flaws = sum(1 for i in task.checklist if i.polarity == "negative" and not i.fatal and i.id in present)
    keys = cited(trajectory.final or "", trajectory.citations)
    allowed = next(
        (i.check.value for i in task.checklist if i.check is not None and i.check.type == "cites_outside"),
        None,
    )
    precision = None
    if allowed is not None and keys:
        allowed_keys = {key.strip() for key in allowed.split(",")}
        precision = round(sum(1 for key in keys if key in allowed_keys) / len(keys), 4)
    return {"flaws": flaws, "citations": len(keys), "citation_precision": precision}
