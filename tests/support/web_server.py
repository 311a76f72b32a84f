"""A static web server on loopback: pages by path, with status, content type, redirects and delays."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from support.loopback import loopback


@dataclass
class Page:
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    location: str | None = None
    delay_s: float = 0.0
    drip_s: float = 0.0  # send the body one byte at a time, this long apart


@dataclass
class WebServer:
    pages: dict[str, Page]
    url: str = ""
    hits: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)  # the Host header of each request


@contextmanager
def web_server(pages: dict[str, Page], host: str = "127.0.0.1", port: int = 0) -> Iterator[WebServer]:
    state = WebServer(pages)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.hits.append(self.path)
            state.hosts.append(self.headers.get("host", ""))
            page = state.pages.get(self.path)
            if page is None:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if page.delay_s:
                time.sleep(page.delay_s)
            self.send_response(page.status)
            if page.location:
                self.send_header("location", page.location)
            self.send_header("content-type", page.content_type)
            self.send_header("content-length", str(len(page.body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if not page.drip_s:
                    self.wfile.write(page.body)
                for i in range(len(page.body) if page.drip_s else 0):
                    self.wfile.write(page.body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(page.drip_s)

    with loopback(Handler, host, port) as url:
        state.url = url
        yield state
