"""Page fetching against a real HTTP server on loopback serving real HTML."""

from __future__ import annotations

import json

import pytest

from dr_agent.fetch import FetchConfig, Fetcher, FetchError
from support.web_server import Page, web_server


def article_html(drb_reports) -> tuple[str, bytes]:
    """A real report (DeepResearch Bench) wrapped in a page with navigation, ads and a footer."""
    report = json.loads(drb_reports.read_text().splitlines()[0])
    paragraphs = "".join(f"<p>{p}</p>" for p in report["article"].split("\n") if p.strip())
    html = (
        "<!doctype html><html><head><title>Research report</title><meta charset='utf-8'></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About us</a> | <a href='/shop'>Shop now</a></nav>"
        "<div class='ad'>BUY CHEAP WIDGETS TODAY</div>"
        f"<main><article><h1>Research report</h1>{paragraphs}</article></main>"
        "<footer>Copyright 2025 Example Media. All rights reserved.</footer></body></html>"
    )
    return report["article"], html.encode()


def allow_loopback(**kw) -> Fetcher:
    return Fetcher(FetchConfig(**{"allow": ["127.0.0.1/32"], "timeout_s": 2.0, **kw}))


def test_extracts_the_article_and_drops_the_boilerplate(drb_reports):
    article, html = article_html(drb_reports)
    with web_server({"/report": Page(html)}) as site:
        page = allow_loopback().fetch(f"{site.url}/report")
    first_sentence = next(line for line in article.split("\n") if len(line) > 60)[:60]
    assert first_sentence in page.text
    assert "Copyright 2025" not in page.text and "Shop now" not in page.text
    assert page.title == "Research report"


def test_plain_text_passes_through_and_other_types_are_refused():
    pages = {"/notes.txt": Page(b"plain notes", "text/plain"), "/logo.png": Page(b"\x89PNG", "image/png")}
    with web_server(pages) as site:
        fetcher = allow_loopback()
        assert fetcher.fetch(f"{site.url}/notes.txt").text == "plain notes"
        with pytest.raises(FetchError, match="cannot read content of type image/png"):
            fetcher.fetch(f"{site.url}/logo.png")


def test_pages_over_the_size_limit_are_refused():
    with web_server({"/big": Page(b"<p>" + b"x" * 50_000 + b"</p>")}) as site:
        with pytest.raises(FetchError, match="larger than 10000 bytes"):
            allow_loopback(max_bytes=10_000).fetch(f"{site.url}/big")


def test_loopback_is_refused_unless_allowed():
    with web_server({"/": Page(b"<p>hello</p>")}) as site:
        with pytest.raises(
            FetchError,
            match=r"resolves to 127\.0\.0\.1, a private, loopback, link-local or otherwise non-public address",
        ):
            Fetcher().fetch(f"{site.url}/")
        assert site.hits == []  # refused before connecting


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://10.20.30.40/admin"])
def test_a_redirect_to_a_private_address_is_refused_before_connecting(target):
    with web_server({"/go": Page(status=302, location=target)}) as site:
        with pytest.raises(
            FetchError, match="a private, loopback, link-local or otherwise non-public address"
        ):
            allow_loopback().fetch(f"{site.url}/go")
        assert site.hits == ["/go"]


def test_redirects_within_allowed_hosts_are_followed_and_bounded():
    pages = {"/a": Page(status=301, location="/b"), "/b": Page(b"<p>arrived at b</p>", "text/plain")}
    pages["/loop"] = Page(status=302, location="/loop")
    with web_server(pages) as site:
        page = allow_loopback().fetch(f"{site.url}/a")
        assert page.url == f"{site.url}/b" and page.text == "<p>arrived at b</p>"
        with pytest.raises(FetchError, match="more than 2 redirects"):
            allow_loopback(max_redirects=2).fetch(f"{site.url}/loop")


def test_schemes_errors_and_timeouts_are_fetch_errors():
    fetcher = allow_loopback(timeout_s=0.3)
    with pytest.raises(FetchError, match="only http and https"):
        fetcher.fetch("file:///etc/passwd")
    with web_server({"/slow": Page(b"late", "text/plain", delay_s=1.0)}) as site:
        with pytest.raises(FetchError, match="timed out"):
            fetcher.fetch(f"{site.url}/slow")
        with pytest.raises(FetchError, match="HTTP 404"):
            fetcher.fetch(f"{site.url}/missing")


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/latest/meta-data/",  # a cloud metadata address in 100.64/10 (shared space)
        "http://[2002:a9fe:a9fe::]/",  # 6to4 wrapping 169.254.169.254
        "http://[fec0::1]/",  # site-local
        "http://[::ffff:10.0.0.1]/",  # IPv4-mapped private
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    ],
)
def test_only_globally_routable_addresses_are_fetched(url):
    with pytest.raises(FetchError, match="otherwise non-public address"):
        Fetcher().fetch(url)


def test_the_fetch_connects_to_the_address_it_checked_not_to_a_rebound_one(monkeypatch):
    """A name that resolves to an allowed address when checked and to 127.0.0.1 the next time (a zero-TTL
    DNS rebinding) is read from the checked address, with its own Host header."""
    import socket

    with web_server({"/": Page(b"public page", "text/plain")}, host="127.0.0.2") as public:
        port = int(public.url.rsplit(":", 1)[1])
        with web_server({"/": Page(b"SECRET", "text/plain")}, host="127.0.0.1", port=port) as secret:
            real = socket.getaddrinfo
            answers = iter(["127.0.0.2"])

            def rebinding(host, *args, **kw):
                if host == "rebind.example":
                    return real(next(answers, "127.0.0.1"), *args, **kw)
                return real(host, *args, **kw)

            monkeypatch.setattr(socket, "getaddrinfo", rebinding)
            page = Fetcher(FetchConfig(allow=["127.0.0.2/32"], timeout_s=2.0)).fetch(
                f"http://rebind.example:{port}/"
            )
            assert page.text == "public page"
            assert secret.hits == [] and public.hits == ["/"]
            assert public.hosts == [f"rebind.example:{port}"]


def test_the_timeout_bounds_the_whole_fetch_not_each_read():
    import time

    with web_server({"/drip": Page(b"x" * 20, "text/plain", drip_s=0.25)}) as site:
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"timed out after 1\.\ds \(the limit is 1s\)"):
            allow_loopback(timeout_s=1.0).fetch(f"{site.url}/drip")
        assert time.monotonic() - started < 2.0  # the drip would take 5 s
