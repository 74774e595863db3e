"""Paging of lists held in memory, one way for every service: a size that
is checked and capped, and an opaque token that is the key of the last item
returned, so a page stays right while items come and go between calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from pinet.runtime.errors import invalid

T = TypeVar("T")


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    """0 means the default; more than the maximum is cut to it."""
    if requested < 0:
        raise invalid(f"{field}: must not be negative")
    return min(requested or default, maximum)


def page_after(items: Sequence[T], key: Callable[[T], str], token: str, size: int) -> tuple[list[T], str]:
    """The items (sorted by key) after the one keyed token, at most size of
    them, and the token of the next page ("" when this is the last)."""
    rest = [item for item in items if key(item) > token] if token else list(items)
    page = rest[:size]
    return page, key(page[-1]) if len(rest) > size else ""
