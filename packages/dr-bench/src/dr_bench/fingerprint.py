"""What decides a bench score besides the model itself, recorded with every `dr bench run` so that two runs
are compared like with like: the chat template, the system prompt, the tool schemas and how they are sent,
the agent's budgets, the search backend and index, the judge and its prompts. Published numbers most often
fail to reproduce on exactly these.

Each entry is a short SHA-256 digest (with a readable hint where one helps). `dr bench report` and
`dr bench compare` warn when runs differ in anything but the model and its chat template.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent
    from dr_judge.judge import ChecklistJudge

# Entries that differ between the runs a comparison is about (one model against another).
COMPARED = ("model", "chat_template")
# Digest entries recorded with their settings in full too, so a difference can name the setting.
READABLE = {"agent": "agent_settings", "judge_settings": "judge_config"}


def _digest(value: Any) -> str:
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:12]


def chat_template(model: str | None) -> str:
    """The digest of the chat template of a model served from a local folder (as dr serves them); for a
    model known only by its name at an endpoint, 'unknown (served by name)'."""
    if not model:
        return "unknown"
    folder = Path(model)
    for name in ("chat_template.jinja", "chat_template.json"):
        if (folder / name).is_file():
            return _digest((folder / name).read_bytes())
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if template:
            return _digest(template)
        return "none in tokenizer_config.json"
    return "unknown (served by name)"


def _index(backend: Any) -> dict[str, Any]:
    index = getattr(backend, "index", None)
    directory = getattr(index, "directory", None)
    if directory is None:
        return {"search": type(backend).__name__}
    meta = Path(directory) / "index.json"
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    sqlite = Path(directory) / "docs.sqlite"
    size = sqlite.stat().st_size if sqlite.is_file() else None
    return {"search": type(backend).__name__, "index": _digest({**info, "docs_bytes": size})}


def fingerprint(agent: ResearchAgent, judge: ChecklistJudge) -> dict[str, Any]:
    """The fingerprint of a bench run's agent and judge."""
    from dr_judge import judge as judging

    llm = getattr(agent, "llm", None)
    llm_config = getattr(llm, "config", None)
    model = getattr(llm_config, "model", None)
    settings = agent.config.model_dump()
    tool_mode = settings.pop("tool_mode", "auto")
    judge_llm = getattr(judge, "llm", None)
    judge_config = getattr(judge, "config", None)
    entries: dict[str, Any] = {
        "model": model,
        "chat_template": chat_template(model),
        "system_prompt": _digest(agent.system_prompt),
        "tools": _digest(agent.tools),
        "tool_mode": tool_mode,
        "agent": _digest(settings),
        **_index(agent.backend),
        "web": agent.fetcher is not None,
        "judge": getattr(getattr(judge_llm, "config", None), "model", None) or "deterministic",
        "judge_settings": _digest(judge_config.model_dump() if judge_config is not None else None),
        "agent_settings": json.loads(json.dumps(settings, default=str)),
        "judge_config": json.loads(json.dumps(judge_config.model_dump(), default=str))
        if judge_config is not None
        else None,
        "judge_prompts": _digest([judging.SYSTEM, judging.EXACT_SYSTEM]),
    }
    entries["digest"] = _digest({k: v for k, v in entries.items() if k not in COMPARED})
    return entries


def differences(fingerprints: dict[str, dict[str, Any] | None]) -> list[str]:
    """For runs by name, the entries (other than the model and its template) in which they differ, as
    'entry: run=value, ...'; runs without a fingerprint are named too."""
    missing = [run for run, f in fingerprints.items() if not f]
    known = {run: f for run, f in fingerprints.items() if f}
    out = [f"no fingerprint (run with an older dr): {', '.join(missing)}"] if missing and known else []
    keys = sorted({k for f in known.values() for k in f} - {*COMPARED, "digest", *READABLE.values()})
    for key in keys:
        values = {run: f.get(key) for run, f in known.items()}
        if len({json.dumps(v, default=str) for v in values.values()}) == 1:
            continue
        readable = {run: f.get(READABLE.get(key, "")) for run, f in known.items()}
        if key in READABLE and all(isinstance(v, dict) for v in readable.values()):
            out.extend(_setting_lines(key, {run: dict(v or {}) for run, v in readable.items()}))
        else:
            out.append(f"{key}: " + ", ".join(f"{run}={value}" for run, value in values.items()))
    return out


def _setting_lines(entry: str, settings: dict[str, dict[str, Any]]) -> list[str]:
    """'agent: max_tokens 12000 (run a) vs 20000 (run b)', one line per setting that differs."""
    lines = []
    for name in sorted({k for values in settings.values() for k in values}):
        values = {run: values.get(name) for run, values in settings.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            shown = " vs ".join(f"{json.dumps(v, default=str)} ({run})" for run, v in values.items())
            lines.append(f"{entry}: {name} {shown}")
    return lines
