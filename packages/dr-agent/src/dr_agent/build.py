"""Assemble an agent from settings: [llm], [search], [fetch] and [agent] sections, DR_* variables, flags.

Every command that runs the agent (dr research, dr serve's API, dr bench, dr data trajectories) builds it
here, so the same flag means the same thing in each.
"""

from __future__ import annotations

from typing import Any

from dr_agent.agent import AgentConfig, ResearchAgent
from dr_agent.fetch import FetchConfig, Fetcher
from dr_agent.search import SearchConfig, make_backend
from dr_core.config import origin, resolve
from dr_core.llm import LLMClient, LLMConfig
from dr_core.log import logger


def build_agent(
    llm: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    fetch: dict[str, Any] | None = None,
    *,
    web: bool = True,
    runs_at_once: int = 1,
) -> ResearchAgent:
    """An agent from flag values (None = not given) over settings; `web=False` turns page fetching off.

    `runs_at_once`: how many runs share this agent (a command's --concurrency). The client's own request
    cap (the [llm] `concurrency` setting, 8 by default) rises to it unless the user set that cap; a cap set
    lower is kept, with a warning, since it may be a provider's rate limit.
    """
    search_config = resolve(SearchConfig, "search", search or {})
    backend = make_backend(search_config)
    agent_flags = dict(agent or {})
    agent_flags.setdefault("top_k", None)
    if agent_flags["top_k"] is None:
        agent_flags["top_k"] = search_config.top_k
    fetcher = Fetcher(resolve(FetchConfig, "fetch", fetch or {})) if web else None
    llm_config = resolve(LLMConfig, "llm", llm or {})
    if runs_at_once > llm_config.concurrency:
        where = origin(LLMConfig, "llm", "concurrency", llm or {})
        if where is None:
            llm_config = llm_config.model_copy(update={"concurrency": runs_at_once})
        else:
            logger.warning(
                "%d runs at once share %d model requests at a time (%s)",
                runs_at_once, llm_config.concurrency, where,
            )  # fmt: skip
    return ResearchAgent(
        LLMClient(llm_config),
        backend,
        fetcher,
        resolve(AgentConfig, "agent", agent_flags),
    )


def agent_from_flags(
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    search: str | None = None,
    index: Any = None,
    max_steps: int | None = None,
    max_tokens: int | None = None,
    max_time: float | None = None,
    context_window: int | None = None,
    temperature: float | None = None,
    no_web: bool = False,
    tool_mode: str | None = None,
    runs_at_once: int = 1,
) -> ResearchAgent:
    """The agent for the flags `dr research` and `dr bench run` share (dr_agent.cli's option types)."""
    return build_agent(
        llm={"base_url": base_url, "model": model, "api_key": api_key},
        search={"backend": search, "index": index},
        agent={
            "max_steps": max_steps,
            "max_tokens": max_tokens,
            "max_time_s": max_time,
            "context_window": context_window,
            "temperature": temperature,
            "tool_mode": str(tool_mode) if tool_mode is not None else None,
        },
        web=not no_web,
        runs_at_once=runs_at_once,
    )
