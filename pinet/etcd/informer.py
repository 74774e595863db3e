"""The informer: a local, always-current copy of one etcd prefix.

It lists the prefix at one revision, then watches from that revision + 1,
applying each change to its cache and telling subscribers. When the watch
cannot resume (etcd compacted past it) it lists again and tells subscribers
only what differs between its cache and the new list, so nothing is lost and
nothing is told twice. When etcd goes away it retries with backoff and resumes
from the last revision it saw. Every controller in pinet is built on it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from pinet.etcd.client import Etcd
from pinet.etcd.errors import Compacted, EtcdError, EtcdUnavailable
from pinet.etcd.keyspace import Kind
from pinet.etcd.values import KeyValue
from pinet.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    obj: T
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    type: EventType
    key: bytes
    obj: T
    # The cached object before a MODIFIED or DELETED.
    old: T | None
    # The revision of the change (for a DELETED found by a relist: the
    # revision of that list).
    revision: int


Handler = Callable[[Event[T]], None]


class Informer(Generic[T]):
    """Follows one prefix. `decode` turns a value into T; a value it cannot
    decode is logged and ignored. Handlers run synchronously in revision
    order and must not block: a reconciler queues the key and returns."""

    def __init__(
        self,
        etcd: Etcd,
        prefix: bytes,
        decode: Callable[[bytes], T],
        name: str = "",
        max_backoff: float = 2.0,
    ) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.decode = decode
        self.name = name or prefix.decode()
        self.max_backoff = max_backoff
        self._cache: dict[bytes, Item[T]] = {}
        self._handlers: list[Handler[T]] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._revision_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # The revision up to which the cache is complete.
        self.revision = 0
        self.relists = 0
        self.reconnects = 0

    # ------------------------------------------------------------ reading

    def get(self, key: bytes) -> T | None:
        item = self._cache.get(key)
        return item.obj if item else None

    def item(self, key: bytes) -> Item[T] | None:
        return self._cache.get(key)

    def items(self) -> Iterator[tuple[bytes, Item[T]]]:
        return iter(list(self._cache.items()))

    def values(self) -> list[T]:
        return [item.obj for item in self._cache.values()]

    def keys(self) -> list[bytes]:
        return list(self._cache)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._cache))

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def wait_revision(self, revision: int, timeout: float | None = None) -> None:
        """Wait until the cache reflects every change up to revision.

        For the revision of a write under the prefix this returns as soon as
        its event arrives. Any other revision is confirmed only by etcd's
        periodic progress notifications (--experimental-watch-progress-
        notify-interval; pinet's own etcd sends one a second)."""
        if self.revision >= revision:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._revision_waiters.append((revision, fut))
        await asyncio.wait_for(fut, timeout)

    # ---------------------------------------------------------- subscribe

    def subscribe(self, handler: Handler[T], replay: bool = True) -> Callable[[], None]:
        """Call handler for every change; with replay, first with ADDED for
        everything already cached. Returns a function that unsubscribes."""
        self._handlers.append(handler)
        if replay:
            for key, item in list(self._cache.items()):
                handler(Event(EventType.ADDED, key, item.obj, None, item.mod_revision))

        def unsubscribe() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return unsubscribe

    # ------------------------------------------------------------ running

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer:{self.name}")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def run(self) -> None:
        backoff = 0.05
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch()
            except Compacted as exc:
                log.info(
                    "informer %s: history compacted past revision %d (oldest %d); relisting",
                    self.name,
                    self.revision,
                    exc.compact_revision,
                )
                need_list = True
                continue
            except (EtcdUnavailable, EtcdError) as exc:
                self.reconnects += 1
                delay = backoff * (0.5 + random.random())
                log.warning("informer %s: %s; retrying in %.2fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.05

    async def _relist(self) -> None:
        kvs, revision = await self.etcd.list_prefix(self.prefix)
        fresh: dict[bytes, Item[T]] = {}
        for kv in kvs:
            item = self._decode(kv)
            if item is not None:
                fresh[kv.key] = item
        old_cache = self._cache
        self._cache = fresh
        if self._synced.is_set():
            self.relists += 1
        for key, gone in old_cache.items():
            if key not in fresh:
                self._emit(Event(EventType.DELETED, key, gone.obj, gone.obj, revision))
        for key, item in fresh.items():
            old = old_cache.get(key)
            if old is None:
                self._emit(Event(EventType.ADDED, key, item.obj, None, item.mod_revision))
            elif old.create_revision != item.create_revision:
                # Deleted and created again while we could not watch.
                self._emit(Event(EventType.DELETED, key, old.obj, old.obj, item.create_revision))
                self._emit(Event(EventType.ADDED, key, item.obj, None, item.mod_revision))
            elif old.mod_revision != item.mod_revision:
                self._emit(Event(EventType.MODIFIED, key, item.obj, old.obj, item.mod_revision))
        self._advance(revision)
        self._synced.set()

    async def _watch(self) -> None:
        async for batch in self.etcd.watch(self.prefix, self.revision + 1):
            for ev in batch.events:
                self._apply(ev.deleted, ev.kv)
            self._advance(batch.revision)

    def _apply(self, deleted: bool, kv: KeyValue) -> None:
        old = self._cache.get(kv.key)
        if deleted:
            if old is None or old.mod_revision >= kv.mod_revision:
                return
            del self._cache[kv.key]
            self._emit(Event(EventType.DELETED, kv.key, old.obj, old.obj, kv.mod_revision))
            return
        if old is not None and old.mod_revision >= kv.mod_revision:
            return
        decoded = self._decode(kv)
        if decoded is None:
            # An undecodable value replaces whatever was there.
            if old is not None:
                del self._cache[kv.key]
                self._emit(Event(EventType.DELETED, kv.key, old.obj, old.obj, kv.mod_revision))
            return
        self._cache[kv.key] = decoded
        if old is None:
            self._emit(Event(EventType.ADDED, kv.key, decoded.obj, None, kv.mod_revision))
        else:
            self._emit(Event(EventType.MODIFIED, kv.key, decoded.obj, old.obj, kv.mod_revision))

    def _decode(self, kv: KeyValue) -> Item[T] | None:
        try:
            return Item(self.decode(kv.value), kv.create_revision, kv.mod_revision)
        except Exception as exc:
            log.error("informer %s: ignoring undecodable value at %r: %s", self.name, kv.key, exc)
            return None

    def _emit(self, event: Event[T]) -> None:
        for handler in list(self._handlers):
            try:
                handler(event)
            except Exception:
                log.exception("informer %s: handler failed on %s %r", self.name, event.type.value, event.key)

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        self.revision = revision
        if self._revision_waiters:
            waiting = []
            for rev, fut in self._revision_waiters:
                if rev <= revision:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    waiting.append((rev, fut))
            self._revision_waiters = waiting


M = TypeVar("M", bound=Message)


class InformerSet:
    """The informers one component follows: declared in one place, started
    together, ready when every one of them has listed, stopped together.

        informers = InformerSet(etcd, "lb")
        services = informers.follow(SERVICES)
        await informers.start()  # returns once all are synced
    """

    def __init__(self, etcd: Etcd, owner: str) -> None:
        self.etcd = etcd
        self.owner = owner
        self._informers: list[Informer[Any]] = []

    def follow(self, kind: Kind[M], name: str = "") -> Informer[M]:
        """An informer of every object of kind (named owner-kind in logs)."""
        return self.follow_prefix(kind.prefix, kind.decode, name or kind.name)

    def follow_prefix(self, prefix: bytes, decode: Callable[[bytes], T], name: str) -> Informer[T]:
        informer: Informer[T] = Informer(self.etcd, prefix, decode, f"{self.owner}-{name}")
        self._informers.append(informer)
        return informer

    def __iter__(self) -> Iterator[Informer[Any]]:
        return iter(self._informers)

    @property
    def revision(self) -> int:
        """The newest revision any of them has seen."""
        return max((i.revision for i in self._informers), default=0)

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self._informers)

    async def start(self, timeout: float | None = None) -> None:
        for informer in self._informers:
            informer.start()
        await asyncio.wait_for(asyncio.gather(*(i.wait_synced() for i in self._informers)), timeout)

    async def stop(self) -> None:
        for informer in self._informers:
            await informer.stop()
