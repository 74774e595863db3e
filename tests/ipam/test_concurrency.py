"""Two ipam replicas, 64 concurrent clients, 20,000 allocations; and faults:
a replica killed mid-allocation, etcd restarted mid-run."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import pytest

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.devstack.etcd import EtcdServer
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import IPAM_POOLS
from tests.helpers.procs import ServiceProcess
from tests.ipam.checks import assert_consistent
from tests.ipam.conftest import NO_GC, ensure_network, pod_owner

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub as Stub
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}


async def allocate_with_retry(stubs: list[Stub], first: int, pool: str, tenant: str, handle: str) -> str:
    """What a well-behaved client does: on a transport error, ask again with
    the same owner handle, on whichever replica answers."""
    attempt = 0
    while True:
        stub = stubs[(first + attempt) % len(stubs)]
        try:
            resp = await stub.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, handle)), timeout=5)
            return resp.allocation.address
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            attempt += 1
            assert attempt < 200, f"{handle}: still failing after {attempt} attempts: {exc.details()}"
            await asyncio.sleep(0.05)


async def allocate_through_a_fault(
    stubs: list[Stub], pool: str, tenant: str, fault: Callable[[], Awaitable[object]]
) -> dict[str, str]:
    """6,000 allocations from 32 retrying clients; fault() strikes once a
    third of them are done. Returns handle -> address."""
    todo = iter(range(6_000))
    got: dict[str, str] = {}
    reached = asyncio.Event()

    async def client(n: int) -> None:
        for i in todo:
            got[f"h{i}"] = await allocate_with_retry(stubs, n, pool, tenant, f"h{i}")
            if len(got) >= 2_000:
                reached.set()

    async def strike() -> None:
        await reached.wait()
        await fault()

    await asyncio.gather(strike(), *(client(n) for n in range(32)))
    return got


@pytest.mark.slow
async def test_two_replicas_64_clients_20000_allocations(etcd_server: EtcdServer, etcd: Etcd, tenant: str) -> None:
    procs = [await ServiceProcess("ipam", etcd_server.endpoint, NO_GC).start() for _ in range(2)]
    channels = [p.channel() for p in procs]
    stubs: list[Stub] = [ipam_pb2_grpc.IpamServiceStub(c) for c in channels]
    try:
        pool = (await ensure_network(stubs[0], tenant)).pod_pool.pool.name
        todo = iter(range(20_000))
        got: dict[str, str] = {}
        retried = 0

        async def client(n: int) -> None:
            nonlocal retried
            for i in todo:
                handle = f"h{i}"
                req = ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, handle))
                resp = await stubs[n % 2].Allocate(req)
                assert resp.created
                got[handle] = resp.allocation.address
                if i % 10 == 0:  # a retry, on the other replica, must change nothing
                    again = await stubs[(n + 1) % 2].Allocate(req)
                    assert (again.allocation.address, again.created) == (resp.allocation.address, False)
                    retried += 1

        await asyncio.gather(*(client(n) for n in range(64)))
        assert len(got) == 20_000 and retried == 2_000
        assert len(set(got.values())) == 20_000, "no address handed out twice"
        assert await assert_consistent(etcd, pool) == got, "etcd holds exactly what the clients were given"
    finally:
        for c in channels:
            await c.close(None)
        for p in procs:
            await p.terminate()


@pytest.mark.slow
async def test_replica_killed_mid_allocation(etcd_server: EtcdServer, etcd: Etcd, tenant: str) -> None:
    procs = [await ServiceProcess("ipam", etcd_server.endpoint, NO_GC).start() for _ in range(2)]
    channels = [p.channel() for p in procs]
    stubs: list[Stub] = [ipam_pb2_grpc.IpamServiceStub(c) for c in channels]
    try:
        pool = (await ensure_network(stubs[0], tenant)).pod_pool.pool.name

        async def kill_one() -> None:
            assert procs[0].proc is not None
            procs[0].proc.send_signal(signal.SIGKILL)

        got = await allocate_through_a_fault(stubs, pool, tenant, kill_one)
        assert procs[0].proc is not None and procs[0].proc.returncode == -signal.SIGKILL
        assert len(got) == 6_000 and len(set(got.values())) == 6_000
        assert await assert_consistent(etcd, pool) == got, "nothing owned twice, nothing leaked"
    finally:
        for c in channels:
            await c.close(None)
        await procs[0].kill()
        await procs[1].terminate()


@pytest.mark.slow
async def test_etcd_restart_mid_run(make_etcd_server: Callable[[], EtcdServer], tenant: str) -> None:
    server = make_etcd_server()
    procs = [await ServiceProcess("ipam", server.endpoint, NO_GC).start() for _ in range(2)]
    channels = [p.channel() for p in procs]
    stubs: list[Stub] = [ipam_pb2_grpc.IpamServiceStub(c) for c in channels]
    etcd = await server.client().connect()
    try:
        pool = (await ensure_network(stubs[0], tenant)).pod_pool.pool.name
        got = await allocate_through_a_fault(stubs, pool, tenant, lambda: asyncio.to_thread(server.restart))
        assert len(got) == 6_000 and len(set(got.values())) == 6_000
        assert await assert_consistent(etcd, pool) == got
        # Both replicas are still healthy and serving.
        for stub in stubs:
            resp = await stub.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, "after")))
            assert resp.allocation.address
    finally:
        await etcd.close()
        for c in channels:
            await c.close(None)
        for p in procs:
            await p.terminate()


async def test_the_floating_pool_is_made_while_other_pools_are_being_made(
    make_etcd_server: Callable[[], EtcdServer],
) -> None:
    """The network service makes its tenants' pools as the ipam starts: the
    ipam's own floating pool must not be lost to that race (an ABORTED
    create was once taken as done)."""
    server = make_etcd_server()
    etcd = await server.client().connect()
    stop = asyncio.Event()

    async def make_pools() -> None:
        n = 0
        while not stop.is_set():
            pool = ipam_pb2.Pool(name=f"busy{n}", tenant=f"busy{n}", kind=ipam_pb2.POOL_KIND_POD,
                                 ranges=[f"10.{n % 200}.0.0/24"])  # fmt: skip
            await etcd.put(IPAM_POOLS.key(pool.name), IPAM_POOLS.encode(pool))
            n += 1
            await asyncio.sleep(0.001)

    writer = asyncio.create_task(make_pools())
    procs = []
    try:
        for _ in range(3):
            proc = await ServiceProcess("ipam", server.endpoint, ["--floating-ranges", "198.51.100.0/24",
                                                                  "--gc-interval", "0"]).start()  # fmt: skip
            procs.append(proc)
            assert await etcd.get(IPAM_POOLS.key("floating")) is not None, "SERVING means the floating pool exists"
            await proc.terminate()
            await etcd.delete(IPAM_POOLS.key("floating"))
    finally:
        stop.set()
        await writer
        for proc in procs:
            await proc.kill()
        await etcd.close()
