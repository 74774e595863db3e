"""The reconciler: a de-duplicating work queue of keys and a worker that
brings each key's actual state to its desired state.

Informer handlers only enqueue keys; the worker reads the current desired
state from the informer caches when it gets to a key, so a burst of events
for one key costs one reconcile (level-triggered), and a key that fails is
retried with backoff without blocking the others. A caller that needs a
key done before it answers (an RPC that wires a pod) waits with `settle`,
so the worker stays the only writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pinet.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class FullPass:
    """The key of a pass over everything, reading the kernel back first
    (run_with_resync enqueues it periodically)."""


FULL = FullPass()


class Reconciler(Generic[K]):
    def __init__(
        self,
        name: str,
        reconcile: Callable[[K], Awaitable[Any]],
        max_backoff: float = 10.0,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.max_backoff = max_backoff
        self._queue: dict[K, None] = {}  # insertion-ordered set
        self._ready = asyncio.Event()
        self._failures: dict[K, int] = {}
        self._retry_handles: dict[K, asyncio.TimerHandle] = {}
        self._settling: dict[K, list[asyncio.Future[Any]]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.reconciled = 0
        self.errors = 0
        self.last_duration = 0.0

    def enqueue(self, key: K) -> None:
        if key in self._retry_handles:
            self._retry_handles.pop(key).cancel()
        self._queue[key] = None
        self._idle.clear()
        self._ready.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def settle(self, key: K, timeout: float | None = None) -> Any:
        """Enqueues key and waits for a reconcile of it that starts after
        this call; returns what reconcile returned, or raises what it raised
        (the key is retried as usual all the same)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._settling.setdefault(key, []).append(done)
        self.enqueue(key)
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        finally:
            done.cancel()  # no-op when done; else nothing is left to set it
            waiting = self._settling.get(key, [])
            if done in waiting:
                waiting.remove(done)
                if not waiting:
                    del self._settling[key]

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until the queue is empty and nothing is being reconciled."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            while self._queue:
                key = next(iter(self._queue))
                del self._queue[key]
                settling = self._settling.pop(key, [])
                start = time.perf_counter()
                try:
                    result = await self.reconcile(key)
                    self._failures.pop(key, None)
                    self.reconciled += 1
                    for done in settling:
                        if not done.done():
                            done.set_result(result)
                except asyncio.CancelledError:
                    for done in settling:
                        done.cancel()
                    raise
                except Exception as exc:
                    for done in settling:
                        if not done.done():
                            done.set_exception(exc)
                    self.errors += 1
                    failures = self._failures[key] = self._failures.get(key, 0) + 1
                    delay = min(0.05 * 2**failures, self.max_backoff)
                    log.warning("%s: reconciling %r failed (%s); retrying in %.2fs", self.name, key, exc, delay)
                    loop = asyncio.get_running_loop()
                    self._retry_handles[key] = loop.call_later(delay, self._retry, key)
                self.last_duration = time.perf_counter() - start
            self._ready.clear()
            if not self._retry_handles:
                self._idle.set()

    def _retry(self, key: K) -> None:
        self._retry_handles.pop(key, None)
        self.enqueue(key)


async def run_with_resync(reconciler: Reconciler[K], interval: float, full: K) -> None:
    """Runs reconciler, enqueuing the key full at once and every interval
    seconds: the periodic pass that reads the kernel back and repairs drift."""
    reconciler.enqueue(full)
    worker = asyncio.create_task(reconciler.run())
    try:
        while True:
            await asyncio.sleep(interval)
            reconciler.enqueue(full)
    finally:
        await cancel_and_wait(worker)
