"""The judge as other packages build it: from flags over the [judge] and [judge.llm] settings.

dr-data (teacher runs), dr-train (the RL reward) and dr-bench import `make_judge` from here, and the
judge's typed flags from `dr_judge.options`, never from the `dr judge` command line.
"""

from __future__ import annotations

from typing import Any

from dr_core.config import is_configured, resolve
from dr_core.llm import LLMClient, LLMConfig, resolve_llm
from dr_judge.judge import ChecklistJudge, JudgeConfig


def make_judge(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    at_once: int = 1,
    **config: Any,
) -> ChecklistJudge:
    """A ChecklistJudge from flags over [judge] and [judge.llm] settings; no model when none is configured.
    `at_once`: how many responses the caller judges at a time; the client's request cap follows it
    (`resolve_llm`)."""
    flags = {"base_url": base_url, "model": model, "api_key": api_key}
    llm = None
    if is_configured(LLMConfig, "judge.llm", flags):
        llm = LLMClient(resolve_llm("judge.llm", flags, at_once=at_once))
    return ChecklistJudge(llm, resolve(JudgeConfig, "judge", config))
