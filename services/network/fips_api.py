"""Floating IPs: ipam holds the allocation (tenant, time); the bindings
written with services say which services use it."""

from __future__ import annotations

import grpc

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.keyspace import FIP_BINDINGS
from pinet.objects.meta import new_uid
from pinet.runtime.errors import ApiError, invalid, not_found
from services.ipam.pools import FLOATING_POOL
from services.network.deps import Deps


def _handle(request_id: str) -> str:
    return f"fip-{request_id}" if request_id else f"fip-{new_uid()}"


async def present(deps: Deps, alloc: ipam_pb2.Allocation) -> objects_pb2.FloatingIP:
    bindings, _ = await deps.etcd.list_prefix(FIP_BINDINGS.scope_prefix(alloc.address))
    bound = sorted(f"{b.namespace}/{b.service}" for b in (FIP_BINDINGS.decode(kv.value) for kv in bindings))
    return objects_pb2.FloatingIP(
        address=alloc.address,
        tenant=alloc.owner.tenant,
        allocated_at=alloc.allocated_at,
        bound_services=bound,
        description=alloc.owner.name,
        resource_version=alloc.resource_version,
    )


async def allocate(deps: Deps, tenant: str, address: str, description: str, request_id: str) -> objects_pb2.FloatingIP:
    await deps.tenants.ensure(tenant)
    if len(description) > 200:
        raise invalid("description: at most 200 characters")
    if request_id and (len(request_id) > 100 or not request_id.replace("-", "").replace("_", "").isalnum()):
        raise invalid("request_id: at most 100 letters, digits, '-' and '_'")
    owner = ipam_pb2.Owner(
        tenant=tenant, kind=ipam_pb2.OWNER_KIND_FLOATING_IP, handle=_handle(request_id), name=description
    )
    alloc = await deps.ipam.allocate(FLOATING_POOL, owner, address, field="address" if address else "")
    return await present(deps, alloc)


async def _mine(deps: Deps, tenant: str, address: str) -> ipam_pb2.Allocation:
    try:
        alloc: ipam_pb2.Allocation = await deps.ipam.call(
            "GetAllocation", ipam_pb2.GetAllocationRequest(pool=FLOATING_POOL, address=address), "address"
        )
    except ApiError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            alloc = ipam_pb2.Allocation()
        else:
            raise
    if alloc.owner.tenant != tenant:
        # Another tenant's address looks exactly like a free one.
        raise not_found(f"floating IP {address} not found")
    return alloc


async def get(deps: Deps, tenant: str, address: str) -> objects_pb2.FloatingIP:
    return await present(deps, await _mine(deps, tenant, address))


async def list_all(deps: Deps, tenant: str) -> list[objects_pb2.FloatingIP]:
    out = []
    token = ""
    while True:
        resp = await deps.ipam.call(
            "ListAllocations",
            ipam_pb2.ListAllocationsRequest(pool=FLOATING_POOL, tenant=tenant, page_size=1000, page_token=token),
        )
        for alloc in resp.allocations:
            out.append(await present(deps, alloc))
        token = resp.next_page_token
        if not token:
            return out


async def release(deps: Deps, tenant: str, address: str) -> None:
    await _mine(deps, tenant, address)
    await deps.ipam.call(
        "Release", ipam_pb2.ReleaseRequest(pool=FLOATING_POOL, address=address, tenant=tenant), "address"
    )
