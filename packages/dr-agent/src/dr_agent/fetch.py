"""Opening web pages for the agent: httpx with timeouts, a size limit, content-type checks, trafilatura
extraction, and an SSRF guard that checks every address, redirects included, before connecting.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from pydantic import BaseModel, Field

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = (
    "text/plain",
    "text/markdown",
    "text/x-markdown",
    "application/json",
    "text/csv",
    "application/xml",
)


class FetchConfig(BaseModel):
    """Section [fetch] of the config file, DR_FETCH_* variables."""

    timeout_s: float = Field(15.0, gt=0)
    max_bytes: int = Field(5_000_000, gt=0, description="Pages larger than this are refused.")
    max_redirects: int = Field(5, ge=0)
    user_agent: str = "dr-research-agent/0.1"
    allow_private: bool = Field(
        False, description="Allow private, loopback and link-local addresses (unsafe)."
    )
    allow: list[str] = Field(
        default_factory=list, description="Networks (CIDR) or host names allowed even though private."
    )


class FetchError(Exception):
    """A page that could not be opened; the message is shown to the model as the tool result."""


@dataclass
class Page:
    url: str
    title: str | None
    text: str
    content_type: str


# RFC 6052's well-known NAT64 prefix: the IPv4 address in the low 32 bits
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215's local-use prefix (RFC 6052's /48 layout)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible addresses, ::a.b.c.d
SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated addresses (RFC 2765), ::ffff:0:a.b.c.d


# IANA's special-purpose networks that are not globally reachable, listed here as well as asked of
# `ipaddress` (whose `is_global` differs between Python versions): the guard holds the same on each.
SPECIAL_PURPOSE = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
]


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, IPv4-compatible, SIIT, 6to4, Teredo (server
    and client) and NAT64 (the well-known /96 and the local-use /48)."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in IPV4_COMPATIBLE or address in SIIT or address in NAT64:
        return [low32]
    if address in NAT64_LOCAL:
        # a /48 prefix: the address's first 16 bits in bits 48-63, then the u octet, then the last 16 bits
        value = int(address)
        return [ipaddress.IPv4Address((((value >> 64) & 0xFFFF) << 16) | ((value >> 40) & 0xFFFF))]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def _blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `address` is anything but a globally routable unicast address, including IPv4 addresses
    carried inside IPv6 ones (see embedded_ipv4: each is held to the rules of a literal IPv4 address) and
    deprecated site-local IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return True  # a zone names an interface: only link-local and the like carry one
        carried = embedded_ipv4(address)
        if carried:  # it leads where the IPv4 address does; a local-use NAT64 prefix stays local
            return address in NAT64_LOCAL or any(_blocked(part) for part in carried)
    if any(address in network for network in SPECIAL_PURPOSE if network.version == address.version):
        return True
    return not address.is_global or address.is_multicast


class _Expired(Exception):
    """The fetch's deadline passed between two reads."""


class _Watchdog:
    """One wall-clock deadline over a fetch. httpx's timeouts bound each read, so a server that sends a
    byte just inside each one keeps a fetch going for ever; at the deadline this shuts down the sockets
    the fetch opened (seen through httpcore's trace hook), which ends any read in progress at once."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            raise _Expired
        return left

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.append(sock)
                    if self.expired:
                        self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


class Fetcher:
    """Fetches pages for the agent. Thread-safe; share one per process."""

    def __init__(self, config: FetchConfig | None = None) -> None:
        self.config = config or FetchConfig()
        self._networks = []
        self._hosts = set()
        for entry in self.config.allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry.lower())
        self._http = httpx.Client(
            timeout=self.config.timeout_s,
            follow_redirects=False,  # each hop is checked by the guard first
            # a new connection per fetch: the deadline's watchdog sees every socket a fetch reads from
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": self.config.user_agent, "Accept": "text/html,text/plain;q=0.9,*/*;q=0.5"},
        )

    def check_url(self, url: str) -> str | None:
        """Refuse non-http(s) URLs and hosts that resolve to an address that is not globally routable
        (unless allowed); return the checked address to connect to (None where the host is allowed by name
        or private addresses are allowed, and the host is resolved as usual)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchError(f"refused {url}: not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"refused {url}: only http and https URLs can be opened")
        host = unquote(parts.hostname or "")  # a percent-encoded address is checked as the address
        if not host:
            raise FetchError(f"refused {url}: no host")
        if self.config.allow_private or host.lower() in self._hosts:
            return None
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80))
        except socket.gaierror as exc:
            raise FetchError(f"could not resolve {host}: {exc.strerror}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for address in addresses:
            if any(address in network for network in self._networks):
                continue
            if _blocked(address):
                raise FetchError(
                    f"refused {url}: {host} resolves to {address}, a private, loopback, link-local or "
                    "otherwise non-public address"
                )
        return str(addresses[0])

    def _request(self, url: str, address: str | None, timeout: float) -> httpx.Request:
        """A GET of `url` sent to `address`, the one the guard checked, so that a name that resolves
        differently the second time (DNS rebinding) cannot lead elsewhere; the Host header and the TLS
        server name (and certificate check) stay those of the URL's host."""
        request_timeout = httpx.Timeout(timeout)
        if address is None:
            return self._http.build_request("GET", url, timeout=request_timeout)
        parts = httpx.URL(url)
        extensions = {"sni_hostname": parts.host} if parts.scheme == "https" else {}
        return self._http.build_request(
            "GET",
            parts.copy_with(host=address),
            headers={"Host": parts.netloc.decode("ascii")},
            timeout=request_timeout,
            extensions=extensions,
        )

    def fetch(self, url: str) -> Page:
        """The page at `url` as text, following redirects that pass the guard. `timeout_s` is one
        wall-clock deadline over the whole fetch: connecting, headers (however slowly they trickle), the
        body and every redirect. At the deadline the connection is shut down, and the error gives the time
        that really passed."""
        start = time.monotonic()
        watchdog = _Watchdog(start + self.config.timeout_s)
        try:
            return self._fetch(url, watchdog)
        except (httpx.TimeoutException, _Expired):
            elapsed = time.monotonic() - start
            raise FetchError(
                f"{url}: timed out after {elapsed:.1f}s (the limit is {self.config.timeout_s:g}s)"
            ) from None
        except httpx.HTTPError as exc:
            if watchdog.expired:
                elapsed = time.monotonic() - start
                raise FetchError(
                    f"{url}: timed out after {elapsed:.1f}s (the limit is {self.config.timeout_s:g}s)"
                ) from None
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            watchdog.cancel()

    def _fetch(self, url: str, watchdog: _Watchdog) -> Page:
        current = url
        for _ in range(self.config.max_redirects + 1):
            address = self.check_url(current)
            remaining = watchdog.remaining()
            request = self._request(current, address, remaining)
            request.extensions["trace"] = watchdog.trace
            response = self._http.send(request, stream=True)
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(f"{current}: redirect without a location")
                    current = urljoin(current, location)
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"{current}: HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type and content_type not in HTML_TYPES + TEXT_TYPES:
                    raise FetchError(f"{current}: cannot read content of type {content_type}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
                    raise FetchError(f"{current}: page is larger than {self.config.max_bytes} bytes")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > self.config.max_bytes:
                        raise FetchError(f"{current}: page is larger than {self.config.max_bytes} bytes")
                    watchdog.remaining()
                encoding = response.encoding or "utf-8"
            finally:
                response.close()
            raw = bytes(body).decode(encoding, errors="replace")
            if content_type in HTML_TYPES or (not content_type and "<html" in raw[:2000].lower()):
                from dr_agent.documents import html_to_text

                title, text = html_to_text(raw)
                if not text.strip():
                    raise FetchError(f"{current}: no readable text on the page")
                return Page(url=current, title=title, text=text, content_type=content_type or "text/html")
            return Page(url=current, title=None, text=raw, content_type=content_type or "text/plain")
        raise FetchError(f"{url}: more than {self.config.max_redirects} redirects")

    def close(self) -> None:
        self._http.close()
