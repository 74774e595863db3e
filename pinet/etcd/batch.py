"""Group commit: many independent transactions sent as one.

Callers submit small transactions (compare / success / failure). While a
batch is in flight, new submissions queue; when it returns, everything queued
goes out as one etcd transaction whose operations are the submissions as
nested transactions, each judged on its own compares. One caller alone pays
one round trip, as before; under load, one round trip carries up to
`max_batch` transactions. etcd refuses a request in which two nested
transactions write the same key, so a submission that writes a key already
in the forming batch waits for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pinet.etcd.client import Etcd, TxnResult, op_txn

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    compare: Sequence[Any]
    success: Sequence[Any]
    failure: Sequence[Any]
    writes: frozenset[bytes]
    future: asyncio.Future[TxnResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _written_keys(ops: Sequence[Any]) -> set[bytes]:
    keys: set[bytes] = set()
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_put":
            keys.add(op.request_put.key)
        elif which == "request_delete_range":
            keys.add(op.request_delete_range.key)
        elif which == "request_txn":
            keys |= _written_keys(op.request_txn.success) | _written_keys(op.request_txn.failure)
    return keys


class TxnBatcher:
    def __init__(self, etcd: Etcd, max_batch: int = 128, max_in_flight: int = 1, linger: float = 0.003) -> None:
        # etcd's default --max-txn-ops is 128 operations per level.
        self.etcd = etcd
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.linger = linger
        self._last_size = 0
        self.round_trips = 0
        self.submitted = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="txn-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.cancel()
        self._queue.clear()

    async def txn(
        self,
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
        writes: frozenset[bytes] | None = None,
    ) -> TxnResult:
        """Like Etcd.txn, sharing a round trip with concurrent callers.
        writes, when the caller knows them, are the keys the operations
        write (saves looking through the operations)."""
        self.start()
        if writes is None:
            writes = frozenset(_written_keys(success) | _written_keys(failure))
        pending = _Pending(compare, success, failure, writes)
        self._queue.append(pending)
        self.submitted += 1
        self._wakeup.set()
        return await pending.future

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        written: set[bytes] = set()
        rest: list[_Pending] = []
        for pending in self._queue:
            if len(batch) < self.max_batch and not (pending.writes & written):
                batch.append(pending)
                written |= pending.writes
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._slots.acquire()
                # Let every handler that is ready to run submit first, so
                # that one round trip carries all of them; under load (the
                # last batch was shared) also wait a moment for more.
                await asyncio.sleep(self.linger if self._last_size > 1 else 0)
                task = asyncio.create_task(self._send(self._take_batch()))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        self.round_trips += 1
        self._last_size = len(batch)
        try:
            if len(batch) == 1:
                only = batch[0]
                result = await self.etcd.txn(only.compare, only.success, only.failure)
                _resolve(only, result)
                return
            outer = await self.etcd.txn([], [op_txn(p.compare, p.success, p.failure) for p in batch])
            for pending, inner in zip(batch, outer.results, strict=True):
                if isinstance(inner, TxnResult):
                    _resolve(pending, inner)
                else:
                    _fail(pending, RuntimeError("etcd returned no nested transaction result"))
        except Exception as exc:
            for pending in batch:
                _fail(pending, exc)
        finally:
            self._slots.release()
            if self._queue:
                self._wakeup.set()


def _resolve(pending: _Pending, result: TxnResult) -> None:
    if not pending.future.done():
        pending.future.set_result(result)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
