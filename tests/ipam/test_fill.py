"""Fill a whole /16 tenant network through gRPC, exhaust it, empty it, fill it again."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

import grpc
import pytest

from pinet.api.ipam.v1 import ipam_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import IPAM_ADDRESSES, IPAM_HANDLES
from services.ipam.pools import PoolLayout, network_pools
from tests.ipam.conftest import ensure_network, pod_owner

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub as Stub
WORKERS = 64


async def fill(ipam: Stub, tenant: str, pool: str, count: int, round_: int) -> list[str]:
    handles = iter(range(count))
    got: list[str] = []

    async def worker() -> None:
        for i in handles:
            resp = await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, f"r{round_}-{i}")))
            assert resp.created
            got.append(resp.allocation.address)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return got


async def release_all(ipam: Stub, tenant: str, pool: str, addresses: list[str]) -> None:
    todo = iter(addresses)

    async def worker() -> None:
        for address in todo:
            resp = await ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, address=address, tenant=tenant))
            assert list(resp.released) == [address]

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


@pytest.mark.slow
# 2 x 65,533 allocations and releases through gRPC: 6-7 minutes on a 2-core
# machine (the code at the commit before and after the layout change alike);
# the default 300 s guard against hangs is too short for it.
@pytest.mark.timeout(900)
async def test_fill_exhaust_release_refill_a_whole_slash16(ipam: Stub, tenant: str, etcd: Etcd) -> None:
    pool = (await ensure_network(ipam, tenant)).pod_pool.pool.name
    layout = PoolLayout.from_pool(network_pools(tenant)[0])
    every = set(layout.walk(0))
    assert len(every) == layout.capacity == 61430
    for round_ in (1, 2):
        got = await fill(ipam, tenant, pool, layout.capacity, round_)
        assert len(got) == len(set(got)) == layout.capacity, "every address exactly once"
        assert {int(ipaddress.IPv4Address(a)) for a in got} == every
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, "one-too-many")))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert pool in (err.value.details() or "")
        assert await etcd.count_prefix(IPAM_ADDRESSES.scope_prefix(pool)) == layout.capacity
        assert await etcd.count_prefix(IPAM_HANDLES.scope_prefix(pool)) == layout.capacity, "nothing half-written"
        await release_all(ipam, tenant, pool, got)
        assert await etcd.count_prefix(IPAM_ADDRESSES.scope_prefix(pool)) == 0
        assert await etcd.count_prefix(IPAM_HANDLES.scope_prefix(pool)) == 0
