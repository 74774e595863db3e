"""The informer against a real etcd: no event lost or duplicated across an
etcd restart, a compaction past its revision and 10,000 rapid writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pinet.devstack.etcd import EtcdServer
from pinet.etcd.client import Etcd
from pinet.etcd.errors import EtcdUnavailable
from pinet.etcd.informer import Event, EventType, Informer
from tests.helpers.tcpproxy import TcpProxy


class Recorder:
    """Collects informer events and checks them for duplicates."""

    def __init__(self) -> None:
        self.events: list[Event[bytes]] = []

    def __call__(self, event: Event[bytes]) -> None:
        self.events.append(event)

    def put_revisions(self) -> list[tuple[bytes, int]]:
        return [(e.key, e.revision) for e in self.events if e.type is not EventType.DELETED]

    def assert_no_duplicates(self) -> None:
        seen = [(e.key, e.revision, e.type) for e in self.events]
        assert len(seen) == len(set(seen)), "an event was delivered twice"


def identity(value: bytes) -> bytes:
    return value


async def wait_until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def history(etcd: Etcd, prefix: bytes, start: int, end: int) -> list[tuple[bytes, int]]:
    """Every put under prefix in [start, end] as etcd itself records it."""
    puts: list[tuple[bytes, int]] = []
    if end < start:
        return puts
    async for batch in etcd.watch(prefix, start, progress_notify=False):
        puts.extend((ev.kv.key, ev.kv.mod_revision) for ev in batch.events if not ev.deleted)
        if batch.revision >= end:
            return [p for p in puts if p[1] <= end]
    return puts


async def assert_cache_matches_etcd(informer: Informer[bytes], etcd: Etcd, prefix: bytes) -> None:
    kvs, revision = await etcd.list_prefix(prefix)
    await informer.wait_revision(revision, timeout=20)
    assert {k: v.obj for k, v in informer.items()} == {kv.key: kv.value for kv in kvs}


async def test_initial_list_then_watch(etcd: Etcd, prefix: bytes) -> None:
    await etcd.put(prefix + b"a", b"1")
    await etcd.put(prefix + b"b", b"2")
    informer = Informer(etcd, prefix, identity)
    rec = Recorder()
    informer.subscribe(rec)
    informer.start()
    try:
        await informer.wait_synced(10)
        assert sorted(e.key for e in rec.events) == [prefix + b"a", prefix + b"b"]
        rev = await etcd.put(prefix + b"a", b"3")
        await etcd.delete(prefix + b"b")
        await wait_until(lambda: len(rec.events) == 4)
        assert [(e.type, e.key) for e in rec.events[2:]] == [
            (EventType.MODIFIED, prefix + b"a"),
            (EventType.DELETED, prefix + b"b"),
        ]
        assert rec.events[2].old == b"1" and rec.events[2].revision == rev
        assert rec.events[3].obj == b"2", "a DELETED event carries the last known object"
        # A late subscriber is replayed the cache.
        late = Recorder()
        informer.subscribe(late)
        assert [(e.type, e.obj) for e in late.events] == [(EventType.ADDED, b"3")]
    finally:
        await informer.stop()


async def test_ten_thousand_rapid_writes(etcd: Etcd, prefix: bytes) -> None:
    informer = Informer(etcd, prefix, identity)
    rec = Recorder()
    informer.subscribe(rec)
    informer.start()
    try:
        await informer.wait_synced(10)
        written: list[tuple[bytes, int]] = []

        async def writer(worker: int) -> None:
            for i in range(10_000 // 50):
                key = prefix + f"k{(worker * 7 + i) % 300}".encode()
                rev = await etcd.put(key, f"{worker}-{i}".encode())
                written.append((key, rev))

        await asyncio.gather(*(writer(w) for w in range(50)))
        assert len(written) == 10_000
        await informer.wait_revision(max(r for _, r in written), timeout=30)
        got = rec.put_revisions()
        assert len(got) == 10_000
        assert sorted(got, key=lambda kr: kr[1]) == sorted(written, key=lambda kr: kr[1])
        revisions = [r for _, r in got]
        assert revisions == sorted(revisions), "events arrive in revision order"
        rec.assert_no_duplicates()
        await assert_cache_matches_etcd(informer, etcd, prefix)
    finally:
        await informer.stop()


async def test_survives_etcd_restart(make_etcd_server: Callable[[], EtcdServer]) -> None:
    server = make_etcd_server()
    writer_client = await server.client(timeout=1.0).connect()
    informer_client = await server.client().connect()
    prefix = b"/restart/"
    informer = Informer(informer_client, prefix, identity)
    rec = Recorder()
    informer.subscribe(rec)
    informer.start()
    written: list[tuple[bytes, int]] = []
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            key = prefix + f"k{i % 50}".encode()
            try:
                written.append((key, await writer_client.put(key, str(i).encode())))
                i += 1
            except EtcdUnavailable:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.002)

    try:
        await informer.wait_synced(10)
        start_revision = informer.revision + 1
        task = asyncio.create_task(writer())
        await wait_until(lambda: len(written) > 200)
        await asyncio.to_thread(server.restart)
        before = len(written)
        await wait_until(lambda: len(written) > before + 200, timeout=30)
        stop.set()
        await task
        head = await writer_client.current_revision()
        await informer.wait_revision(head, timeout=30)
        assert informer.reconnects >= 1, "the restart was noticed"
        assert informer.relists == 0, "a restart needs no relist: the watch resumes"
        # A write whose reply the restart swallowed may still have landed, so
        # the truth is etcd's own history, which must contain every write the
        # writer saw acknowledged.
        truth = await history(writer_client, prefix, start_revision, head)
        assert set(written) <= set(truth)
        assert rec.put_revisions() == truth
        rec.assert_no_duplicates()
        await assert_cache_matches_etcd(informer, writer_client, prefix)
    finally:
        stop.set()
        await informer.stop()
        await writer_client.close()
        await informer_client.close()


async def test_relists_after_compaction_past_its_revision(make_etcd_server: Callable[[], EtcdServer]) -> None:
    server = make_etcd_server()
    proxy = await TcpProxy(server.client_port).start()
    admin = await server.client().connect()
    behind_proxy = await Etcd(proxy.endpoint, 1.0, server.tls()).connect()
    prefix = b"/compact/"
    for i in range(20):
        await admin.put(prefix + f"k{i}".encode(), b"v0")
    informer = Informer(behind_proxy, prefix, identity, max_backoff=0.2)
    rec = Recorder()
    informer.subscribe(rec)
    informer.start()
    try:
        await informer.wait_synced(10)
        assert len(rec.events) == 20
        seen_revision = informer.revision

        proxy.partition()
        # While the informer is cut off: modify, delete, recreate and add.
        for i in range(5):
            await admin.put(prefix + f"k{i}".encode(), b"v1")
        for i in range(5, 10):
            await admin.delete(prefix + f"k{i}".encode())
        await admin.delete(prefix + b"k10")
        await admin.put(prefix + b"k10", b"recreated")
        for i in range(20, 25):
            await admin.put(prefix + f"k{i}".encode(), b"new")
        for i in range(3):  # several writes to one key: only the last counts
            await admin.put(prefix + b"k0", f"v{2 + i}".encode())
        head = await admin.current_revision()
        await admin.compact(head)
        assert head > seen_revision + 1
        proxy.heal()

        await informer.wait_revision(head, timeout=30)
        assert informer.relists == 1
        rec.assert_no_duplicates()
        after = rec.events[20:]
        by_key: dict[bytes, list[Event[bytes]]] = {}
        for e in after:
            by_key.setdefault(e.key, []).append(e)
        assert [(e.type, e.obj) for e in by_key[prefix + b"k0"]] == [(EventType.MODIFIED, b"v4")]
        for i in range(1, 5):
            assert [(e.type, e.obj) for e in by_key[prefix + f"k{i}".encode()]] == [(EventType.MODIFIED, b"v1")]
        for i in range(5, 10):
            assert [(e.type, e.obj) for e in by_key[prefix + f"k{i}".encode()]] == [(EventType.DELETED, b"v0")]
        assert [(e.type, e.obj) for e in by_key[prefix + b"k10"]] == [
            (EventType.DELETED, b"v0"),
            (EventType.ADDED, b"recreated"),
        ]
        for i in range(20, 25):
            assert [(e.type, e.obj) for e in by_key[prefix + f"k{i}".encode()]] == [(EventType.ADDED, b"new")]
        untouched = {prefix + f"k{i}".encode() for i in range(11, 20)}
        assert not untouched & set(by_key), "unchanged keys are not re-announced"
        await assert_cache_matches_etcd(informer, admin, prefix)

        # And it keeps watching normally afterwards.
        rev = await admin.put(prefix + b"k11", b"later")
        await informer.wait_revision(rev, timeout=10)
        assert rec.events[-1].key == prefix + b"k11" and rec.events[-1].obj == b"later"
    finally:
        await informer.stop()
        await behind_proxy.close()
        await admin.close()
        await proxy.stop()


async def test_undecodable_values_are_skipped(etcd: Etcd, prefix: bytes) -> None:
    def decode(value: bytes) -> int:
        return int(value)

    await etcd.put(prefix + b"good", b"1")
    await etcd.put(prefix + b"bad", b"not a number")
    informer = Informer(etcd, prefix, decode)
    informer.start()
    try:
        await informer.wait_synced(10)
        assert informer.get(prefix + b"good") == 1
        assert prefix + b"bad" not in informer
        rev = await etcd.put(prefix + b"good", b"oops")
        await informer.wait_revision(rev, 10)
        assert prefix + b"good" not in informer, "a value that turned undecodable is dropped"
    finally:
        await informer.stop()


async def test_idle_informer_confirms_revisions_written_elsewhere(etcd: Etcd, prefix: bytes) -> None:
    informer = Informer(etcd, prefix + b"quiet/", identity)
    informer.start()
    try:
        await informer.wait_synced(10)
        elsewhere = await etcd.put(prefix + b"other", b"x")
        # No event under its prefix: etcd's progress notification moves it on.
        await informer.wait_revision(elsewhere, timeout=5)
        assert informer.revision >= elsewhere
        assert len(informer) == 0
    finally:
        await informer.stop()
