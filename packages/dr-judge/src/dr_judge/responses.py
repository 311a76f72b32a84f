"""What the judge reads: a response to a task, from a Trajectory, a Report, or a DeepResearch Bench
report line ({id, prompt, article})."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dr_core.records import Citation, Report, Trajectory, drb_report, is_drb_report


@dataclass
class Response:
    target_id: str
    task_id: str | None
    text: str | None
    citations: list[Citation] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # a Report's own, carried into its Judgment


def as_response(obj: dict[str, Any]) -> Response:
    """Read one JSONL object as a response; pydantic's ValidationError when it is none of the forms."""
    if "messages" in obj:
        trajectory = Trajectory.model_validate(obj)
        return Response(trajectory.id, trajectory.task_id, trajectory.final, trajectory.citations)
    if is_drb_report(obj):
        ident, _, article = drb_report(obj)
        return Response(ident, ident, article)
    report = Report.model_validate(obj)
    return Response(report.id, report.task_id, report.text, meta=report.meta)
