"""The flags of every command that runs the agent (`dr research`, `dr bench run`), declared once: the
endpoint, the search backend and the agent's budgets. A flag that is not given is None, so that the config
file and DR_* variables apply. A budget's help is the description of the setting it sets (`AgentConfig`),
with that setting's default."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from dr_agent.agent import AgentConfig
from dr_agent.search import SearchConfig
from dr_core.flags import flag

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent


def _setting(name: str, text: str | None = None) -> str:
    """The help of the flag that sets AgentConfig's `name`: its description (or `text`) and default."""
    field = AgentConfig.model_fields[name]
    shown = text or field.description or ""
    return f"{shown.rstrip('.')} (default: {field.default})." if field.default is not None else shown


class AgentFlags(BaseModel):
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (DR_LLM_BASE_URL).")
    model: str | None = Field(None, description="Model name at that endpoint (DR_LLM_MODEL).")
    api_key: str | None = Field(None, description="API key (DR_LLM_API_KEY).")
    search: str | None = Field(
        None, description=f"Search backend: {SearchConfig.model_fields['backend'].description}."
    )
    index: Path | None = Field(None, description=SearchConfig.model_fields["index"].description)
    max_steps: int | None = Field(None, description=_setting("max_steps"))
    max_tokens: int | None = Field(None, description=_setting("max_tokens"))
    max_time: float | None = Field(None, description=_setting("max_time_s"))
    context_window: int | None = Field(
        None, description=_setting("context_window", "Context window in tokens.")
    )
    temperature: float | None = Field(None, description=_setting("temperature", "Sampling temperature."))
    no_web: bool = Field(
        False,
        description="Never fetch web pages; only the search backend's documents.",
        json_schema_extra=flag("--no-web", off="--web"),
    )
    tool_mode: Literal["auto", "api", "text"] | None = Field(None, description=_setting("tool_mode"))

    def agent(self, runs_at_once: int = 1) -> ResearchAgent:
        """The agent these flags ask for, over the config file's and DR_* settings they leave unset."""
        from dr_agent.build import build_agent

        return build_agent(
            llm={"base_url": self.base_url, "model": self.model, "api_key": self.api_key},
            search={"backend": self.search, "index": self.index},
            agent={
                "max_steps": self.max_steps,
                "max_tokens": self.max_tokens,
                "max_time_s": self.max_time,
                "context_window": self.context_window,
                "temperature": self.temperature,
                "tool_mode": self.tool_mode,
            },
            web=not self.no_web,
            runs_at_once=runs_at_once,
        )
