"""The ipam API over real gRPC against a real etcd."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

import grpc
import pytest

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import FIP_BINDINGS, IPAM_ADDRESSES, IPAM_HANDLES
from tests.ipam.conftest import ensure_network, pod_owner

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub as Stub


async def expect_error(code: grpc.StatusCode, call: object, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    details = err.value.details() or ""
    for word in words:
        assert word in details, details
    return details


async def test_network_pools_and_usage(ipam: Stub, tenant: str) -> None:
    resp = await ensure_network(ipam, tenant)
    assert resp.pod_pool.usage.capacity == 61430 and resp.pod_pool.usage.used == 0
    assert resp.pod_pool.usage.reserved == 10
    assert resp.service_pool.usage.capacity == 4094
    again = await ensure_network(ipam, tenant)
    assert again.pod_pool.pool.created_at == resp.pod_pool.pool.created_at, "ensuring twice changes nothing"
    pool = resp.pod_pool.pool.name
    await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, "u1")))
    status = await ipam.GetPool(ipam_pb2.GetPoolRequest(name=pool))
    assert (status.usage.used, status.usage.free) == (1, 61429)
    listed = await ipam.ListPools(ipam_pb2.ListPoolsRequest(tenant=tenant))
    assert [p.pool.name for p in listed.pools] == [f"{tenant}.default.pod", f"{tenant}.default.svc"]


async def test_allocation_is_idempotent_by_owner_handle(ipam: Stub, tenant: str, etcd: Etcd) -> None:
    pool = (await ensure_network(ipam, tenant)).pod_pool.pool.name
    request = ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, "pod-uid-1", name="default/web"))
    first, again = await asyncio.gather(ipam.Allocate(request), ipam.Allocate(request))
    assert first.allocation.address == again.allocation.address
    assert sorted([first.created, again.created]) == [False, True]
    third = await ipam.Allocate(request)
    assert third.allocation.address == first.allocation.address and not third.created
    assert third.allocation.allocated_at.seconds > 0
    assert await etcd.count_prefix(IPAM_ADDRESSES.scope_prefix(pool)) == 1
    assert await etcd.count_prefix(IPAM_HANDLES.scope_prefix(pool)) == 1
    address = first.allocation.address
    ip = ipaddress.ip_address(address)
    assert ip in ipaddress.ip_network("10.244.0.0/16") and ip not in ipaddress.ip_network("10.244.240.0/20")
    assert int(ip) & 0xFFFF >= 10, "platform addresses are never handed out"


async def test_specific_addresses(ipam: Stub, tenant: str) -> None:
    svc_pool = (await ensure_network(ipam, tenant)).service_pool.pool.name

    def svc(handle: str, address: str = "") -> ipam_pb2.AllocateRequest:
        owner = ipam_pb2.Owner(tenant=tenant, kind=ipam_pb2.OWNER_KIND_SERVICE, handle=handle)
        return ipam_pb2.AllocateRequest(pool=svc_pool, owner=owner, address=address)

    got = await ipam.Allocate(svc("s1", "10.244.240.10"))
    assert got.allocation.address == "10.244.240.10" and got.created
    assert not (await ipam.Allocate(svc("s1", "10.244.240.10"))).created
    await expect_error(grpc.StatusCode.ALREADY_EXISTS, ipam.Allocate(svc("s2", "10.244.240.10")), "already allocated")
    await expect_error(grpc.StatusCode.ALREADY_EXISTS, ipam.Allocate(svc("s1", "10.244.240.11")), "already holds")
    await expect_error(grpc.StatusCode.OUT_OF_RANGE, ipam.Allocate(svc("s3", "10.244.0.50")), "not an allocatable")
    await expect_error(grpc.StatusCode.OUT_OF_RANGE, ipam.Allocate(svc("s3", "10.244.240.0")))
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, ipam.Allocate(svc("s3", "10.244.240.999")), "address")
    # The failed attempts wrote nothing.
    listed = await ipam.ListAllocations(ipam_pb2.ListAllocationsRequest(pool=svc_pool))
    assert [a.address for a in listed.allocations] == ["10.244.240.10"]


async def test_bad_requests_change_nothing(ipam: Stub, tenant: str, etcd: Etcd) -> None:
    pools = await ensure_network(ipam, tenant)
    pod_pool = pools.pod_pool.pool.name
    before = await etcd.current_revision()
    cases = [
        (grpc.StatusCode.NOT_FOUND, ipam_pb2.AllocateRequest(pool="nope", owner=pod_owner(tenant, "x")), "nope"),
        (grpc.StatusCode.INVALID_ARGUMENT, ipam_pb2.AllocateRequest(owner=pod_owner(tenant, "x")), "pool"),
        (grpc.StatusCode.INVALID_ARGUMENT, ipam_pb2.AllocateRequest(pool=pod_pool), "owner.tenant"),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            ipam_pb2.AllocateRequest(pool=pod_pool, owner=pod_owner(tenant, "bad/handle")),
            "owner.handle",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            ipam_pb2.AllocateRequest(
                pool=pod_pool, owner=ipam_pb2.Owner(tenant=tenant, kind=ipam_pb2.OWNER_KIND_SERVICE, handle="x")
            ),
            "owner.kind",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            ipam_pb2.AllocateRequest(pool=pod_pool, owner=pod_owner("someone-else", "x")),
            "another tenant",
        ),
    ]
    for code, request, word in cases:
        await expect_error(code, ipam.Allocate(request), word)
    assert await etcd.current_revision() == before, "no rejected call wrote anything"


async def test_release_by_address_and_owner(ipam: Stub, tenant: str, etcd: Etcd) -> None:
    pool = (await ensure_network(ipam, tenant)).pod_pool.pool.name
    a = (await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, "a")))).allocation
    b = (await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, "b")))).allocation
    await expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, address=a.address, tenant="intruder")),
        "another tenant",
    )
    done = await ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, address=a.address, tenant=tenant))
    assert list(done.released) == [a.address]
    again = await ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, address=a.address, tenant=tenant))
    assert list(again.released) == [], "releasing a free address is harmless"
    by_owner = await ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, handle="b", tenant=tenant))
    assert list(by_owner.released) == [b.address]
    assert await etcd.count_prefix(IPAM_ADDRESSES.scope_prefix(pool)) == 0
    assert await etcd.count_prefix(IPAM_HANDLES.scope_prefix(pool)) == 0
    await expect_error(
        grpc.StatusCode.NOT_FOUND, ipam.GetAllocation(ipam_pb2.GetAllocationRequest(pool=pool, address=a.address))
    )


async def test_floating_ips_record_tenant_and_time_and_stay_while_bound(ipam: Stub, tenant: str, etcd: Etcd) -> None:
    pool = f"fip-{tenant}"
    await ipam.CreatePool(
        ipam_pb2.CreatePoolRequest(
            pool=ipam_pb2.Pool(name=pool, kind=ipam_pb2.POOL_KIND_FLOATING, ranges=["198.51.100.240/29"])
        )
    )
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        ipam.CreatePool(
            ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(name=pool + "-b", kind=ipam_pb2.POOL_KIND_FLOATING, ranges=["198.51.100.244/30"])
            )
        ),
        "overlap",
    )
    owner = ipam_pb2.Owner(tenant=tenant, kind=ipam_pb2.OWNER_KIND_FLOATING_IP, handle="req-1")
    fip = (await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=owner))).allocation
    assert fip.owner.tenant == tenant and fip.allocated_at.seconds > 0
    other = ipam_pb2.Owner(tenant="other-tenant", kind=ipam_pb2.OWNER_KIND_FLOATING_IP, handle="req-9")
    await ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=other))
    mine = await ipam.ListAllocations(ipam_pb2.ListAllocationsRequest(pool=pool, tenant=tenant))
    assert [a.address for a in mine.allocations] == [fip.address]

    binding = objects_pb2.FloatingIPBinding(address=fip.address, tenant=tenant, namespace="default", service="web")
    key = FIP_BINDINGS.key(fip.address, f"{tenant}.default.web")
    await etcd.put(key, FIP_BINDINGS.encode(binding))
    await expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, address=fip.address, tenant=tenant)),
        "default/web",
    )
    await etcd.delete(key)
    released = await ipam.Release(ipam_pb2.ReleaseRequest(pool=pool, address=fip.address, tenant=tenant))
    assert list(released.released) == [fip.address]
    await expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, ipam.DeletePool(ipam_pb2.DeletePoolRequest(name=pool)), "allocations"
    )


async def test_paging_lists_every_allocation_once(ipam: Stub, tenant: str) -> None:
    pool = (await ensure_network(ipam, tenant)).pod_pool.pool.name
    made = await asyncio.gather(
        *(ipam.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=pod_owner(tenant, f"p{i}"))) for i in range(23))
    )
    seen: list[str] = []
    token = ""
    while True:
        page = await ipam.ListAllocations(ipam_pb2.ListAllocationsRequest(pool=pool, page_size=5, page_token=token))
        assert len(page.allocations) <= 5
        seen += [a.address for a in page.allocations]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(m.allocation.address for m in made)
