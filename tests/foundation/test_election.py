"""Leases and leader election against a real etcd, with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from pinet.devstack.etcd import EtcdServer
from pinet.etcd.client import Etcd
from pinet.etcd.lease import LeaderElection, Lease
from tests.helpers import tls

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_lease_is_kept_alive_and_revoked(etcd: Etcd, prefix: bytes) -> None:
    lease = await Lease(etcd, ttl=2).grant()
    await etcd.put(prefix + b"held", b"x", lease=lease.id)
    await asyncio.sleep(4.5)  # more than two TTLs: only keep-alive explains survival
    assert await etcd.get(prefix + b"held") is not None
    assert not lease.lost.is_set()
    await lease.close()
    assert await etcd.get(prefix + b"held") is None, "closing revokes the lease and its keys"


async def test_only_one_leader_and_graceful_handover(etcd: Etcd, prefix: bytes) -> None:
    name = prefix.decode().strip("/").replace("/", "-")
    leaders: list[str] = []
    running = {"a": 0, "b": 0}

    stops = {i: asyncio.Event() for i in running}

    def make_work(identity: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            running[identity] += 1
            leaders.append(identity)
            assert sum(1 for v in running.values() if v) == 1, "two leaders at once"
            try:
                await stops[identity].wait()
            finally:
                running[identity] -= 1

        return work

    a = LeaderElection(etcd, name, "a", ttl=2)
    b = LeaderElection(etcd, name, "b", ttl=2)
    ta = asyncio.create_task(a.run(make_work("a")))
    await asyncio.sleep(0.5)
    tb = asyncio.create_task(b.run(make_work("b")))
    await asyncio.sleep(0.5)
    assert leaders == ["a"] and a.is_leader and not b.is_leader
    assert await a.current_leader() == "a"
    # The leader's work ending hands over at once (its lease is revoked).
    start = time.monotonic()
    stops["a"].set()
    while leaders[-1] != "b":
        await asyncio.sleep(0.02)
        assert time.monotonic() - start < 2
    ta.cancel()
    tb.cancel()
    await asyncio.gather(ta, tb, return_exceptions=True)


async def test_replica_takes_over_within_5s_of_leader_kill(etcd_server: EtcdServer, etcd: Etcd, prefix: bytes) -> None:
    name = prefix.decode().strip("/").replace("/", "-")
    record = f"/pinet-test/leader/{name}".encode()
    procs = {}
    for ident in ("replica-1", "replica-2"):
        procs[ident] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.helpers.leader_proc",
            etcd_server.endpoint,
            name,
            ident,
            str(tls.pki()),
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 20
        while (kv := await etcd.get(record)) is None:
            assert time.monotonic() < deadline, "nobody became leader"
            await asyncio.sleep(0.05)
        leader = kv.value.decode()
        other = next(i for i in procs if i != leader)
        await asyncio.sleep(1)  # both replicas are campaigning by now
        procs[leader].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await procs[leader].wait()
        while (kv := await etcd.get(record)) is None or kv.value.decode() != other:
            assert time.monotonic() - killed_at < 5, "no takeover within 5 s"
            await asyncio.sleep(0.05)
        print(f"takeover after {time.monotonic() - killed_at:.2f}s")
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.kill()
                await p.wait()
