"""Search backends behind one interface, chosen by name in settings section [search].

local    the tantivy index built by `dr data index` (default); documents open from the index
searxng  a SearXNG instance's JSON API; pages open through the fetcher
brave    the Brave Search web API (commercial; needs an API key); pages open through the fetcher
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import BaseModel, Field

from dr_agent.index import Hit, LocalIndex
from dr_core.errors import ConfigError
from dr_core.records import Document


class SearchConfig(BaseModel):
    """Section [search] of the config file, DR_SEARCH_* variables, or the --search/--index flags."""

    backend: str = Field("local", description="local, searxng or brave")
    index: Path | None = Field(None, description="Index folder for the local backend (dr data index).")
    url: str | None = Field(None, description="Base URL of the SearXNG instance, or another Brave endpoint.")
    api_key: str | None = Field(None, description="API key for commercial backends.")
    top_k: int = Field(5, ge=1, le=50)
    timeout_s: float = Field(15.0, gt=0)


class SearchBackend(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[Hit]: ...

    def get(self, doc_id: str) -> Document | None:
        """A document the backend holds itself (local corpora); None for web backends."""
        ...


def web_id(url: str) -> str:
    """A short stable id for a web result, easy for a model to copy into \\cite{}."""
    return "w" + hashlib.sha1(url.encode()).hexdigest()[:10]


class LocalBackend:
    name = "local"

    def __init__(self, index: LocalIndex) -> None:
        self.index = index

    def search(self, query: str, k: int) -> list[Hit]:
        return self.index.search(query, k)

    def get(self, doc_id: str) -> Document | None:
        return self.index.get(doc_id)


class SearxngBackend:
    name = "searxng"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s)

    def search(self, query: str, k: int) -> list[Hit]:
        response = self._http.get(f"{self.url}/search", params={"q": query, "format": "json"})
        response.raise_for_status()
        results = response.json().get("results") or []
        return [
            Hit(
                web_id(r["url"]),
                r.get("title"),
                r["url"],
                r.get("content") or "",
                float(r.get("score") or 0.0),
            )
            for r in results[:k]
            if r.get("url")
        ]

    def get(self, doc_id: str) -> Document | None:
        return None


class BraveBackend:
    name = "brave"
    endpoint = "https://api.search.brave.com/res/v1/web/search"

    def __init__(self, api_key: str, url: str | None, timeout_s: float) -> None:
        self.url = url or self.endpoint
        self._http = httpx.Client(
            timeout=timeout_s, headers={"X-Subscription-Token": api_key, "Accept": "application/json"}
        )

    def search(self, query: str, k: int) -> list[Hit]:
        response = self._http.get(self.url, params={"q": query, "count": min(k, 20)})
        response.raise_for_status()
        results = (response.json().get("web") or {}).get("results") or []
        return [
            Hit(web_id(r["url"]), r.get("title"), r["url"], r.get("description") or "", float(k - i))
            for i, r in enumerate(results[:k])
            if r.get("url")
        ]

    def get(self, doc_id: str) -> Document | None:
        return None


def make_backend(config: SearchConfig) -> SearchBackend:
    """The backend `config` names, checked for what it needs."""
    if config.backend == "local":
        if config.index is None:
            raise ConfigError(
                "search backend 'local' needs an index folder: --index DIR (or DR_SEARCH_INDEX)"
            )
        return LocalBackend(LocalIndex(config.index))
    if config.backend == "searxng":
        if not config.url:
            raise ConfigError("search backend 'searxng' needs its base URL: [search] url or DR_SEARCH_URL")
        return SearxngBackend(config.url, config.timeout_s)
    if config.backend == "brave":
        if not config.api_key:
            raise ConfigError(
                "search backend 'brave' needs an API key: [search] api_key or DR_SEARCH_API_KEY"
            )
        return BraveBackend(config.api_key, config.url, config.timeout_s)
    raise ConfigError(f"unknown search backend {config.backend!r}; known: local, searxng, brave")
