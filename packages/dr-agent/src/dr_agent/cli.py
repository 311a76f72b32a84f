"""`dr research`: run the research agent on one question (report to stdout) or on a task file."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dr_agent.flags import AgentFlags
from dr_core.config_cli import with_flags
from dr_core.options import OnErrorChoice, OnErrorOpt, Output, Rejects, Resume

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent
    from dr_core.jsonl import OnError


class EventSink:
    """Agent events as JSONL on a file or stdout, one writer shared by every run."""

    def __init__(self, path: str | None) -> None:
        from dr_core.jsonl import RecordWriter

        self.writer = RecordWriter(path) if path else None
        self.lock = threading.Lock()

    def __enter__(self) -> EventSink:
        if self.writer is not None:
            self.writer.open()
        return self

    def __call__(self, event: dict[str, Any]) -> None:
        if self.writer is not None:
            with self.lock:
                self.writer.write(event)

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.__exit__(*exc)


app = typer.Typer(add_completion=False, help="Research a question with the agent, or run it on a task file.")


@app.command("research")
@with_flags(AgentFlags, "agent_flags")
def research(
    question: Annotated[str | None, typer.Argument(help="The question; omit when using --tasks.")] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Task JSONL to run (one Trajectory per task); '-' for stdin.")
    ] = None,
    output: Output = "-",
    trajectory: Annotated[
        Path | None, typer.Option(help="With a question: also write its Trajectory (JSON) here.")
    ] = None,
    events: Annotated[
        str | None, typer.Option(help="Write agent events as JSONL here ('-': stdout).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Tasks run at once.")] = 4,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
    agent_flags: AgentFlags | None = None,
) -> None:
    """Research a question with the agent: plan, search, open, verify, and write a cited report.

    With a QUESTION the report goes to stdout (or, with --events -, the events do). With --tasks, every
    task runs (--concurrency at a time) and its Trajectory goes to -o; --resume skips tasks already there.
    """
    from dr_core.errors import InputError

    assert agent_flags is not None
    if (question is None) == (tasks is None):
        raise InputError("give either a QUESTION or --tasks FILE")
    if tasks is not None and events == "-" and output == "-":
        raise InputError("--tasks writes trajectories to stdout: send --events to a file, or use -o")
    agent = agent_flags.agent(runs_at_once=1 if tasks is None else concurrency)
    if question is not None:
        _one(agent, question, trajectory, events)
    else:
        assert tasks is not None
        mode: OnError = "skip" if on_error == OnErrorChoice.skip else "fail"
        _many(agent, tasks, output, events, concurrency, mode, rejects, resume)


def _one(agent: ResearchAgent, question: str, trajectory_path: Path | None, events: str | None) -> None:
    import orjson

    from dr_core.errors import DrError, LLMError
    from dr_core.log import logger

    with EventSink(events) as sink:
        result = agent.run(question, on_event=sink)
    if trajectory_path is not None:
        from dr_core.files import write_atomic

        write_atomic(
            trajectory_path, orjson.dumps(result.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
        )
    if result.stop_reason == "error":
        raise LLMError(f"the run failed: {result.meta.get('error')}")
    if result.final is None:
        logger.warning("no answer: the run stopped on %s after %d steps", result.stop_reason, result.steps)
        if result.stop_reason == "time_budget":  # a deadline is a model-server failure's exit code, 3
            raise LLMError(f"no answer within --max-time (stopped on time_budget after {result.wall_s:.1f}s)")
        raise DrError(f"no answer (stopped on {result.stop_reason})")
    if events != "-":
        sys.stdout.write(result.final.rstrip() + "\n")
        sys.stdout.flush()


def _many(
    agent: ResearchAgent,
    tasks: str,
    output: str,
    events: str | None,
    concurrency: int,
    on_error: OnError,
    rejects: str | None,
    resume: bool,
) -> None:
    from dr_core.concurrency import completed_map
    from dr_core.errors import LLMError
    from dr_core.jsonl import Origin
    from dr_core.log import logger
    from dr_core.pipe import Pipe
    from dr_core.records import Task

    def key(record: dict[str, Any]) -> Any:
        return record.get("task_id")

    failed = 0
    with (
        Pipe([tasks], output, on_error=on_error, rejects=rejects, resume=resume, output_key=key) as pipe,
        EventSink(events) as sink,
    ):

        def run(item: tuple[Task, Origin]) -> Any:
            task = item[0]
            return agent.run(task.question, task_id=task.id, on_event=sink)

        located = pipe.located(Task, description="research")
        for (task, origin), result in completed_map(run, located, concurrency):
            if result.stop_reason == "error":
                failed += 1
                message = f"task {task.id}: {result.meta.get('error')}"
                if on_error == "fail":
                    raise LLMError(message)
                # a failed run is not output: kept aside, and a --resume will run it again
                pipe.reject(origin, message)
                continue
            pipe.write(result)
    if failed:
        logger.warning("%d tasks failed; they are in the rejects file and rerun with --resume", failed)
