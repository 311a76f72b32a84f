"""Helpers the tests share."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def must(value: T | None) -> T:
    """`value`, asserted present: for results that may be None where the test expects one."""
    assert value is not None
    return value
