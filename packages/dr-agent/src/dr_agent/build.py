"""Assemble an agent from settings: [llm], [search], [fetch] and [agent] sections, DR_* variables, flags.

Every command that runs the agent (dr research, dr serve's API, dr bench, dr data trajectories) builds it
here, so the same flag means the same thing in each.
"""

from __future__ import annotations

from typing import Any

from dr_agent.agent import AgentConfig, ResearchAgent
from dr_agent.fetch import FetchConfig, Fetcher
from dr_agent.search import SearchConfig, make_backend
from dr_core.config import resolve
from dr_core.llm import LLMClient, resolve_llm


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

    `runs_at_once`: how many runs share this agent (a command's --concurrency); the client's request cap
    follows it (`resolve_llm`).
    """
    search_config = resolve(SearchConfig, "search", search or {})
    backend = make_backend(search_config)
    agent_flags = dict(agent or {})
    agent_flags.setdefault("top_k", None)
    if agent_flags["top_k"] is None:
        agent_flags["top_k"] = search_config.top_k
    fetcher = Fetcher(resolve(FetchConfig, "fetch", fetch or {})) if web else None
    return ResearchAgent(
        LLMClient(resolve_llm("llm", llm, at_once=runs_at_once)),
        backend,
        fetcher,
        resolve(AgentConfig, "agent", agent_flags),
    )
