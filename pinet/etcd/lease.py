"""Leases with keep-alive, and leader election on top of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from pinet.etcd.client import Etcd
from pinet.etcd.errors import EtcdError, EtcdUnavailable
from pinet.etcd.keyspace import leader_key
from pinet.etcd.txn import key_missing, op_get, op_put
from pinet.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    pass


class Lease:
    """A lease kept alive until closed. `lost` is set when etcd let it expire
    (the keep-alive could not reach etcd for a whole TTL)."""

    def __init__(self, etcd: Etcd, ttl: int) -> None:
        self.etcd = etcd
        self.ttl = ttl
        self.id = 0
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def grant(self) -> Lease:
        self.id = await self.etcd.grant(self.ttl)
        self.lost.clear()
        self._task = asyncio.create_task(self._keepalive(), name=f"lease:{self.id:x}")
        return self

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        expires = loop.time() + self.ttl
        interval = max(self.ttl / 3, 0.2)
        while loop.time() < expires:
            try:
                async for granted in self.etcd.keepalive(self.id, interval):
                    if granted <= 0:
                        log.warning("lease %x expired in etcd", self.id)
                        self.lost.set()
                        return
                    expires = loop.time() + granted
            except (EtcdUnavailable, EtcdError) as exc:
                log.warning("lease %x keep-alive failed: %s", self.id, exc)
            await asyncio.sleep(min(interval, max(expires - loop.time(), 0)))
        log.warning("lease %x: etcd unreachable for a whole TTL; treating it as lost", self.id)
        self.lost.set()

    async def close(self, revoke: bool = True) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if revoke and self.id and not self.lost.is_set():
            with contextlib.suppress(EtcdError):
                await self.etcd.revoke(self.id)
        self.lost.set()


class LeaderElection:
    """Runs `work` in exactly one replica at a time.

    A replica campaigns by creating the election key bound to its lease; the
    winner runs `work` until its lease is lost, the key disappears or `work`
    returns, then steps down and campaigns again. Losers wait for the key to
    be deleted (the leader stepped down, or its lease expired when it died).
    """

    def __init__(self, etcd: Etcd, name: str, identity: str, ttl: int = 3) -> None:
        self.etcd = etcd
        self.key = leader_key(name)
        self.identity = identity
        self.ttl = ttl
        self.is_leader = False
        self.leader_changed = asyncio.Event()

    async def current_leader(self) -> str | None:
        kv = await self.etcd.get(self.key)
        return kv.value.decode() if kv else None

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await self._term(work)
            except (EtcdUnavailable, EtcdError) as exc:
                log.warning("election %s: %s; retrying", self.key.decode(), exc)
                await asyncio.sleep(0.5)

    async def _term(self, work: Callable[[], Awaitable[None]]) -> None:
        lease = await Lease(self.etcd, self.ttl).grant()
        try:
            while True:
                res = await self.etcd.txn(
                    [key_missing(self.key)],
                    [op_put(self.key, self.identity.encode(), lease.id)],
                    [op_get(self.key)],
                )
                if res.succeeded:
                    break
                current = res.results[0]
                revision = current[0].mod_revision if isinstance(current, list) and current else res.revision
                if await self._wait_deleted(revision, lease):
                    continue
                return  # our own lease was lost while waiting: start afresh
            log.info("election %s: %s is now the leader", self.key.decode(), self.identity)
            self._set_leader(True)
            await self._lead(work, lease)
        finally:
            self._set_leader(False)
            await lease.close()

    async def _wait_deleted(self, revision: int, lease: Lease) -> bool:
        """Wait for the election key to be deleted. False if our lease dies."""

        async def deleted() -> None:
            async for batch in self.etcd.watch(self.key, revision + 1, progress_notify=False):
                if any(ev.deleted for ev in batch.events if ev.kv.key == self.key):
                    return

        return await _first(deleted(), lease.lost.wait()) == 0

    async def _lead(self, work: Callable[[], Awaitable[None]], lease: Lease) -> None:
        async def key_gone() -> None:
            kv = await self.etcd.get(self.key)
            if kv is None or kv.lease != lease.id:
                return
            async for batch in self.etcd.watch(self.key, kv.mod_revision + 1, progress_notify=False):
                if any(ev.deleted for ev in batch.events):
                    return

        which = await _first(work(), lease.lost.wait(), key_gone())
        log.info(
            "election %s: %s steps down (%s)",
            self.key.decode(),
            self.identity,
            ("work ended", "lease lost", "key removed")[which],
        )

    def _set_leader(self, value: bool) -> None:
        if self.is_leader != value:
            self.is_leader = value
            self.leader_changed.set()
            self.leader_changed = asyncio.Event()


async def _first(*aws: Awaitable[object]) -> int:
    """Run awaitables until the first finishes; cancel the rest. Returns the
    index of the one that finished and re-raises its exception."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(t for t in tasks if t in done)
        first.result()
        return tasks.index(first)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
