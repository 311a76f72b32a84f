"""Web search plug-ins (SearXNG's JSON API, Brave's web search API) and opening their results as pages."""

from __future__ import annotations

import json

import pytest

from dr_agent.agent import AgentConfig, ResearchAgent
from dr_agent.fetch import FetchConfig, Fetcher
from dr_agent.search import BraveBackend, SearchConfig, SearxngBackend, make_backend, web_id
from dr_core.errors import ConfigError
from dr_core.llm import LLMClient, LLMConfig
from support import must
from support.openai_server import scripted_server
from support.policies import researcher
from support.web_server import Page, web_server

ARTICLE = (
    "<html><head><title>Velmora history</title></head><body><nav>Menu</nav><article><h1>Velmora</h1>"
    "<p>Velmora is a river port on the Auren. It was founded in 1821 by the shipwright Ada Quist, who built "
    "its first yard and ran it for thirty years.</p><p>The flood of 1870 destroyed the lower town, which was "
    "rebuilt in stone over the following decade.</p></article></body></html>"
)


def test_searxng_results_become_hits_with_stable_ids():
    body = {"results": [{"url": "http://a.example/x", "title": "A", "content": "alpha"}, {"title": "no url"}]}
    with web_server(
        {"/search?q=velmora&format=json": Page(json.dumps(body).encode(), "application/json")}
    ) as site:
        hits = SearxngBackend(site.url, 5).search("velmora", 5)
    assert [(h.id, h.title, h.url, h.snippet) for h in hits] == [
        (web_id("http://a.example/x"), "A", "http://a.example/x", "alpha")
    ]
    assert web_id("http://a.example/x") == web_id("http://a.example/x") != web_id("http://a.example/y")


def test_brave_results_and_its_subscription_token(monkeypatch):
    body = {"web": {"results": [{"url": "http://b.example/", "title": "B", "description": "beta"}]}}
    with web_server(
        {"/res/v1/web/search?q=velmora&count=3": Page(json.dumps(body).encode(), "application/json")}
    ) as site:
        backend = BraveBackend("token-1", f"{site.url}/res/v1/web/search", 5)
        hits = backend.search("velmora", 3)
    assert [(h.title, h.snippet) for h in hits] == [("B", "beta")]
    assert backend._http.headers["X-Subscription-Token"] == "token-1"


def test_backends_are_chosen_by_config_and_say_what_they_lack():
    with pytest.raises(ConfigError, match="needs its base URL"):
        make_backend(SearchConfig(backend="searxng"))
    with pytest.raises(ConfigError, match="needs an API key"):
        make_backend(SearchConfig(backend="brave"))
    with pytest.raises(ConfigError, match="unknown search backend 'bing'"):
        make_backend(SearchConfig(backend="bing"))
    assert isinstance(make_backend(SearchConfig(backend="searxng", url="http://x")), SearxngBackend)


def test_the_agent_opens_web_results_through_the_fetcher():
    with web_server({"/velmora": Page(ARTICLE.encode())}) as site:
        results = {
            "results": [{"url": f"{site.url}/velmora", "title": "Velmora history", "content": "river port"}]
        }
        site.pages["/search?q=Velmora+founder&format=json"] = Page(
            json.dumps(results).encode(), "application/json"
        )
        fetcher = Fetcher(FetchConfig(allow=["127.0.0.1/32"]))
        with scripted_server(researcher("Velmora founder")) as llm:
            agent = ResearchAgent(
                LLMClient(LLMConfig(base_url=llm.url, model="m")),
                SearxngBackend(site.url, 5),
                fetcher,
                AgentConfig(),
            )
            trajectory = agent.run("Who founded Velmora?")
    page_id = web_id(f"{site.url}/velmora")
    assert (
        trajectory.stop_reason == "answered" and trajectory.final == f"The answer is in \\cite{{{page_id}}}."
    )
    opened = must([m.content for m in trajectory.messages if m.role == "tool"][2])
    assert "founded in 1821 by the shipwright Ada Quist" in opened and "Menu" not in opened
    assert (
        trajectory.citations[0].opened and must(trajectory.citations[0].source).url == f"{site.url}/velmora"
    )


def test_web_pages_are_off_without_a_fetcher(drb_index):
    from dr_agent.index import LocalIndex
    from dr_agent.search import LocalBackend
    from dr_agent.tools import OpenArgs, Toolbox

    box = Toolbox(LocalBackend(LocalIndex(drb_index)), None)
    text = box._open(OpenArgs(ids=["https://example.org/", "no-such-doc"])).text
    assert (
        "opening web pages is turned off" in text
        and "no document or search result with id 'no-such-doc'" in text
    )
