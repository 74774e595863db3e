"""The one thread a process makes its kernel calls on.

Entering a namespace changes the calling thread only, and the per-namespace
netlink sockets and nftables contexts a process keeps are not safe to share
between threads, so every call that touches them runs here, one at a time,
and the event loop never blocks on the kernel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class KernelThread:
    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def stop(self) -> None:
        """Waits for the call in progress, if any."""
        self._executor.shutdown(wait=True)
