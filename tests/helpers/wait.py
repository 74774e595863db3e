"""Waiting for a condition that other processes bring about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    check: Callable[[], object], what: str | Callable[[], str] = "the condition holds", timeout: float = 15
) -> None:
    """Polls check (a function or coroutine function) until it returns
    something true; what (or what() for details gathered at the moment of
    failure) says what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting until {what if isinstance(what, str) else what()}"
        await asyncio.sleep(0.1)
