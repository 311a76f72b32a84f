"""The judge as other packages build it: from flags over the [judge] and [judge.llm] settings.

dr-train (the RL reward) imports `make_judge` from here; commands that take the judge's flags
(`dr_judge.flags`) build it through them, never from the `dr judge` command line.
"""

from __future__ import annotations

from pathlib import Path
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
        warn_if_trained_for_another_prompt(llm)
    return ChecklistJudge(llm, resolve(JudgeConfig, "judge", config))


def warn_if_trained_for_another_prompt(llm: LLMClient) -> list[str]:
    """Warn (and return the recorded digests) when the judge model's folder says it was trained for a
    checklist prompt other than this dr's. The folder is the model name when that is a folder here, else
    the `root` the server reports it loaded (vLLM's /v1/models)."""
    from dr_core.log import logger
    from dr_core.models import PROMPT_FILE, trained_prompts
    from dr_judge.judge import PROMPT_DIGEST

    places = [Path(llm.config.model)]
    root = llm.served_model(timeout_s=5.0).get("root")
    if isinstance(root, str) and root:
        places.append(Path(root))
    for folder in places:
        recorded = trained_prompts(folder)
        if recorded and PROMPT_DIGEST not in recorded:
            logger.warning(
                "judge model %s was trained for checklist prompt %s (%s), but this dr asks with prompt %s: "
                "its verdicts may not hold; retrain it on `dr data judge` examples of this version",
                llm.config.model,
                ", ".join(recorded),
                folder / PROMPT_FILE,
                PROMPT_DIGEST,
            )
            return recorded
        if recorded:
            return recorded
    return []
