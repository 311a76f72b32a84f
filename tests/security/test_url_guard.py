"""The URL guard, by property: an address in any blocked network, written in any form a URL allows, is
refused before anything is connected to. Names are never looked up here: every host is an address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dr_agent.fetch import Fetcher, FetchError

# Written out here again on purpose (dr_agent.fetch.SPECIAL_PURPOSE lists them too): a property test that
# took the guard's own list could not catch a network missing from it.
BLOCKED_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",  # shared address space (cloud metadata services live here too)
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
BLOCKED_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "64:ff9b:1::/48"]

GUARD = Fetcher()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def addresses(networks: list[str]) -> st.SearchStrategy:
    nets = [ipaddress.ip_network(n) for n in networks]
    return st.sampled_from(nets).flatmap(
        lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i])
    )


def v4_forms(address: ipaddress.IPv4Address) -> list[str]:
    """The textual forms of an IPv4 address a URL host may take, bracketed IPv6 embeddings included."""
    value = int(address)
    octets = list(address.packed)
    hi16, lo16 = value >> 16, value & 0xFFFF
    nat64_local = ipaddress.IPv6Address((0x64FF9B0001 << 80) | (hi16 << 64) | (lo16 << 40))
    teredo = ipaddress.IPv6Address((0x20010000 << 96) | (0x08080808 << 64) | (value ^ 0xFFFFFFFF))
    return [
        str(address),  # dotted decimal
        str(value),  # one decimal number
        hex(value),  # one hex number
        "0" + oct(value)[2:],  # one octal number
        ".".join("0" + oct(o)[2:] if o else "0" for o in octets),  # dotted octal
        ".".join(hex(o) for o in octets),  # dotted hex
        f"{octets[0]}.{(value & 0xFFFFFF)}",  # a.b24 (two parts)
        f"[::ffff:{address}]",  # IPv4-mapped
        f"[::ffff:{hi16:x}:{lo16:x}]",  # IPv4-mapped, in hex
        f"[::{address}]",  # IPv4-compatible
        f"[::ffff:0:{address}]",  # SIIT
        f"[64:ff9b::{address}]",  # NAT64, well-known prefix
        f"[64:ff9b::{hi16:x}:{lo16:x}]",
        f"[{nat64_local}]",  # NAT64, local-use /48
        f"[2002:{hi16:x}:{lo16:x}::1]",  # 6to4
        f"[{teredo}]",  # Teredo, client address
    ]


def percent_encoded(host: str) -> str:
    return "".join(f"%{ord(c):02X}" if c not in "[]" else c for c in host)


def refused(host: str) -> bool:
    try:
        GUARD.check_url(f"http://{host}/path")
    except FetchError:
        return True
    return False


@SETTINGS
@given(addresses(BLOCKED_V4))
def test_no_blocked_ipv4_address_passes_in_any_form(address):
    for form in v4_forms(address):
        assert refused(form), f"{form} ({address}) passed the guard"
        if not form.startswith("["):  # brackets hold an IPv6 literal, which cannot be percent-encoded
            assert refused(percent_encoded(form)), f"{percent_encoded(form)} ({address}) passed the guard"


@SETTINGS
@given(addresses(BLOCKED_V6))
def test_no_blocked_ipv6_address_passes_in_any_form(address):
    forms = [f"[{address}]", f"[{address.exploded}]"]
    if address.is_link_local:
        forms.append(f"[{address}%25eth0]")  # with a zone
    for form in forms:
        assert refused(form), f"{form} passed the guard"


@pytest.mark.parametrize(
    "host", ["8.8.8.8", "134744072", "0x8080808", "[::ffff:8.8.8.8]", "[64:ff9b::8.8.8.8]"]
)
def test_public_addresses_pass_in_those_forms(host):
    assert GUARD.check_url(f"http://{host}/") is not None


@pytest.mark.parametrize("url", ["http://h:notaport/", "http://[::1/", "http://[zz::1]/"])
def test_malformed_urls_are_refused_not_raised(url):
    with pytest.raises(FetchError, match="not a valid URL"):
        GUARD.check_url(url)
