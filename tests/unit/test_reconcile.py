"""The reconciler's queue (pinet/runtime/reconcile.py): keys merged while
waiting, failures retried, and settle waiting for a pass of its own."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from pinet.runtime.reconcile import Reconciler


class Work:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.fail: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str) -> str:
        await self.gate.wait()
        self.seen.append(key)
        if key in self.fail:
            raise RuntimeError(f"{key} failed")
        return f"done {key} #{self.seen.count(key)}"


@contextlib.asynccontextmanager
async def running(work: Work):  # type: ignore[no-untyped-def]
    reconciler: Reconciler[str] = Reconciler("test", work, max_backoff=0.05)
    task = asyncio.create_task(reconciler.run())
    try:
        yield reconciler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_burst_of_one_key_is_one_reconcile() -> None:
    work = Work()
    work.gate.clear()
    async with running(work) as r:
        for _ in range(5):
            r.enqueue("a")
        r.enqueue("b")
        work.gate.set()
        await r.wait_idle(timeout=2)
    assert work.seen == ["a", "b"]


async def test_settle_returns_what_the_reconcile_returned() -> None:
    work = Work()
    async with running(work) as r:
        assert await r.settle("a", timeout=2) == "done a #1"


async def test_settle_waits_for_a_pass_that_starts_after_it() -> None:
    """A reconcile already under way read the state before the caller
    changed it: settle waits for the next one."""
    work = Work()
    async with running(work) as r:
        work.gate.clear()
        r.enqueue("a")
        await asyncio.sleep(0.01)  # the worker is inside reconcile("a") now
        settled = asyncio.create_task(r.settle("a", timeout=2))
        await asyncio.sleep(0.01)
        work.gate.set()
        assert await settled == "done a #2"


async def test_settle_raises_the_failure_and_the_key_is_retried() -> None:
    work = Work()
    work.fail.add("a")
    async with running(work) as r:
        with pytest.raises(RuntimeError, match="a failed"):
            await r.settle("a", timeout=2)
        work.fail.clear()
        for _ in range(100):
            if work.seen.count("a") >= 2:
                break
            await asyncio.sleep(0.01)
        assert work.seen.count("a") >= 2, "retried after the failure"


async def test_settle_times_out_cleanly() -> None:
    work = Work()
    work.gate.clear()
    async with running(work) as r:
        with pytest.raises(TimeoutError):
            await r.settle("a", timeout=0.05)
        work.gate.set()
        await r.wait_idle(timeout=2)
    assert work.seen == ["a"]
