"""The pinet.ipam.v1.IpamService servicer."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import grpc

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.etcd.batch import TxnBatcher
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import IPAM_ADDRESSES, IPAM_POOLS, NODE_LEASES
from pinet.etcd.txn import key_missing, op_delete, op_put, prefix_empty, unchanged_since
from pinet.objects.meta import stamp
from pinet.runtime.errors import (
    ApiError,
    already_exists,
    exhausted,
    failed_precondition,
    invalid,
    not_found,
    out_of_range,
    permission_denied,
)
from pinet.runtime.paging import page_after, page_size
from pinet.runtime.servicer import unary
from services.ipam import store
from services.ipam.cache import PoolCache
from services.ipam.pools import PoolLayout, int_to_ip, ip_to_int, network_pools, overlaps
from services.ipam.state import PoolState

Context = grpc.aio.ServicerContext[Any, Any]

_HANDLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# How often a replica tries fresh candidates before giving up on a pool
# that other replicas keep filling under it.
MAX_CLAIM_ATTEMPTS = 256
_OWNER_KIND_OF_POOL = {
    ipam_pb2.POOL_KIND_POD: ipam_pb2.OWNER_KIND_POD,
    ipam_pb2.POOL_KIND_SERVICE: ipam_pb2.OWNER_KIND_SERVICE,
    ipam_pb2.POOL_KIND_FLOATING: ipam_pb2.OWNER_KIND_FLOATING_IP,
}
PAGES = (500, 5000)  # default and largest page size


def pool_name(pool: ipam_pb2.Pool) -> str:
    return pool.name


class IpamServicer(ipam_pb2_grpc.IpamServiceServicer):
    def __init__(self, etcd: Etcd, cache: PoolCache, batcher: TxnBatcher) -> None:
        self.etcd = etcd
        self.cache = cache
        self.batcher = batcher

    # ---------------------------------------------------------- helpers

    def _pool(self, name: str) -> tuple[ipam_pb2.Pool, PoolState]:
        if not name:
            raise invalid("pool: required")
        pool = self.cache.pool(name)
        state = self.cache.state(name)
        if pool is None or state is None:
            raise not_found(f"pool {name!r} does not exist")
        return pool, state

    async def _status(self, pool: ipam_pb2.Pool) -> ipam_pb2.PoolStatus:
        layout = PoolLayout.from_pool(pool)
        used = await self.etcd.count_prefix(IPAM_ADDRESSES.scope_prefix(pool.name))
        usage = ipam_pb2.PoolUsage(
            used=used,
            free=max(layout.capacity - used, 0),
            reserved=layout.reserved_count,
            capacity=layout.capacity,
        )
        return ipam_pb2.PoolStatus(pool=pool, usage=usage)

    # ------------------------------------------------------------- pools

    @unary
    async def CreatePool(self, request: ipam_pb2.CreatePoolRequest, context: Context) -> ipam_pb2.PoolStatus:
        return await self._create_pool(request.pool)

    async def _create_pool(self, pool: ipam_pb2.Pool) -> ipam_pb2.PoolStatus:
        layout = PoolLayout.from_pool(pool)
        revision = self.cache.pools.revision
        for other in self.cache.pools.values():
            if other.name == pool.name:
                continue
            same_scope = (other.kind == ipam_pb2.POOL_KIND_FLOATING) == (pool.kind == ipam_pb2.POOL_KIND_FLOATING)
            if pool.kind != ipam_pb2.POOL_KIND_FLOATING:
                same_scope = same_scope and (other.tenant, other.network) == (pool.tenant, pool.network)
            if same_scope and overlaps(layout.allocatable, PoolLayout.from_pool(other).allocatable):
                raise invalid(f"pool.ranges: overlap pool {other.name!r}")
        stored = ipam_pb2.Pool()
        stored.CopyFrom(pool)
        stored.created_at.GetCurrentTime()
        key = IPAM_POOLS.key(pool.name)
        # The overlap check above read the cache at `revision`: the write only
        # goes through if no pool was created or changed since.
        res = await self.etcd.txn(
            [key_missing(key), unchanged_since(IPAM_POOLS.prefix, revision)],
            [op_put(key, IPAM_POOLS.encode(stored))],
        )
        if not res.succeeded:
            if await self.etcd.get(key) is not None:
                raise already_exists(f"pool {pool.name!r} already exists")
            raise ApiError(grpc.StatusCode.ABORTED, "pools changed while this one was being created; retry")
        await self.cache.pools.wait_revision(res.revision, timeout=10)
        return await self._status(stored)

    @unary
    async def GetPool(self, request: ipam_pb2.GetPoolRequest, context: Context) -> ipam_pb2.PoolStatus:
        pool, _ = self._pool(request.name)
        return await self._status(pool)

    @unary
    async def ListPools(self, request: ipam_pb2.ListPoolsRequest, context: Context) -> ipam_pb2.ListPoolsResponse:
        pools = sorted(
            (p for p in self.cache.pools.values() if not request.tenant or p.tenant == request.tenant),
            key=pool_name,
        )
        page, token = page_after(pools, pool_name, request.page_token, page_size(request.page_size, *PAGES))
        return ipam_pb2.ListPoolsResponse(pools=[await self._status(p) for p in page], next_page_token=token)

    @unary
    async def DeletePool(self, request: ipam_pb2.DeletePoolRequest, context: Context) -> ipam_pb2.DeletePoolResponse:
        self._pool(request.name)
        key = IPAM_POOLS.key(request.name)
        res = await self.etcd.txn([prefix_empty(IPAM_ADDRESSES.scope_prefix(request.name))], [op_delete(key)])
        if not res.succeeded:
            raise failed_precondition(f"pool {request.name!r} still has allocations; release them first")
        await self.cache.pools.wait_revision(res.revision, timeout=10)
        return ipam_pb2.DeletePoolResponse()

    @unary
    async def EnsureNetworkPools(
        self, request: ipam_pb2.EnsureNetworkPoolsRequest, context: Context
    ) -> ipam_pb2.EnsureNetworkPoolsResponse:
        if not request.tenant:
            raise invalid("tenant: required")
        pod, svc = network_pools(request.tenant, request.network or "default", request.cidr, request.service_cidr)
        statuses = []
        for wanted in (pod, svc):
            existing = self.cache.pool(wanted.name)
            if existing is None:
                try:
                    statuses.append(await self._create_pool(wanted))
                    continue
                except ApiError as exc:
                    if exc.code != grpc.StatusCode.ALREADY_EXISTS:
                        raise
                    existing = self.cache.pool(wanted.name)
                    if existing is None:
                        raise
            if list(existing.ranges) != list(wanted.ranges) or list(existing.excluded) != list(wanted.excluded):
                raise failed_precondition(
                    f"pool {wanted.name} exists with ranges {list(existing.ranges)}, not {list(wanted.ranges)}"
                )
            statuses.append(await self._status(existing))
        return ipam_pb2.EnsureNetworkPoolsResponse(pod_pool=statuses[0], service_pool=statuses[1])

    # ------------------------------------------------------- allocations

    def _check_owner(self, pool: ipam_pb2.Pool, owner: ipam_pb2.Owner) -> None:
        if not owner.tenant:
            raise invalid("owner.tenant: required")
        if not _HANDLE.match(owner.handle):
            raise invalid("owner.handle: required; letters, digits and . _ : - (at most 128), e.g. the owner's uid")
        if owner.kind == ipam_pb2.OWNER_KIND_UNSPECIFIED:
            raise invalid("owner.kind: must be OWNER_KIND_POD, OWNER_KIND_SERVICE or OWNER_KIND_FLOATING_IP")
        expected = _OWNER_KIND_OF_POOL[pool.kind]
        if owner.kind != expected:
            raise invalid(
                f"owner.kind: pool {pool.name} hands out to {ipam_pb2.OwnerKind.Name(expected)}, "
                f"not {ipam_pb2.OwnerKind.Name(owner.kind)}"
            )
        if pool.tenant and owner.tenant != pool.tenant:
            raise permission_denied(f"pool {pool.name} belongs to another tenant")

    @unary
    async def Allocate(self, request: ipam_pb2.AllocateRequest, context: Context) -> ipam_pb2.AllocateResponse:
        pool, state = self._pool(request.pool)
        self._check_owner(pool, request.owner)
        # The allocation is built inside the response, so that answering
        # does not copy it.
        resp = ipam_pb2.AllocateResponse()
        alloc = resp.allocation
        alloc.pool = pool.name
        alloc.owner.CopyFrom(request.owner)
        stamp(alloc.allocated_at)
        if request.address:
            return await self._allocate_specific(pool, state, resp, request.address)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            ip = state.propose()
            if ip is None:
                ip = await self._confirm_exhausted(pool, state)
            alloc.address = int_to_ip(ip)
            try:
                claim = await store.claim(self.batcher, alloc)
            except BaseException:
                state.settle(ip, taken=False)
                raise
            if claim.outcome is store.Outcome.CREATED:
                state.settle(ip, taken=True)
                resp.created = True
                return resp
            if claim.outcome is store.Outcome.HELD:
                state.settle(ip, taken=False)
                return ipam_pb2.AllocateResponse(allocation=claim.allocation, created=False)
            state.settle(ip, taken=True)
        raise ApiError(grpc.StatusCode.ABORTED, f"pool {pool.name} is under heavy contention; retry")

    async def _confirm_exhausted(self, pool: ipam_pb2.Pool, state: PoolState) -> int:
        """The cache says the pool is full: check etcd before saying so."""
        ip = None
        used = await self.etcd.count_prefix(IPAM_ADDRESSES.scope_prefix(pool.name))
        if used < state.layout.capacity:
            await self.cache.resync(pool.name)
            ip = state.propose()
        if ip is None:
            raise exhausted(f"pool {pool.name} is exhausted: all {state.layout.capacity} addresses are allocated")
        return ip

    async def _allocate_specific(
        self, pool: ipam_pb2.Pool, state: PoolState, resp: ipam_pb2.AllocateResponse, address: str
    ) -> ipam_pb2.AllocateResponse:
        try:
            ip = ip_to_int(address, "address")
        except ApiError:
            raise invalid(f"address: {address!r} is not an IPv4 address") from None
        if not state.layout.contains(ip):
            raise out_of_range(f"address: {address} is not an allocatable address of pool {pool.name}")
        alloc = resp.allocation
        alloc.address = int_to_ip(ip)
        claim = await store.claim(self.batcher, alloc)
        if claim.outcome is store.Outcome.CREATED:
            state.mark_used(ip)
            resp.created = True
            return resp
        if claim.outcome is store.Outcome.HELD:
            if claim.allocation.address == alloc.address:
                return ipam_pb2.AllocateResponse(allocation=claim.allocation, created=False)
            raise already_exists(
                f"owner.handle {alloc.owner.handle} already holds {claim.allocation.address} in pool {pool.name}"
            )
        state.mark_used(ip)
        raise already_exists(f"address {alloc.address} of pool {pool.name} is already allocated")

    @unary
    async def Release(self, request: ipam_pb2.ReleaseRequest, context: Context) -> ipam_pb2.ReleaseResponse:
        pool, state = self._pool(request.pool)
        if bool(request.address) == bool(request.handle):
            raise invalid("give exactly one of address or handle")
        address = request.address
        if request.handle:
            if not _HANDLE.match(request.handle):
                raise invalid(f"handle: {request.handle!r} is not a valid owner handle")
            kv = await self.etcd.get(store.handle_key(pool.name, request.handle))
            if kv is None:
                return ipam_pb2.ReleaseResponse()
            address = IPAM_ADDRESSES.decode(kv.value).address
        else:
            try:
                address = int_to_ip(ip_to_int(address, "address"))
            except ApiError:
                raise invalid(f"address: {request.address!r} is not an IPv4 address") from None
        released = await store.release(self.etcd, pool, address, request.tenant)
        for done in released:
            state.mark_free(int(ipaddress.IPv4Address(done)))
        return ipam_pb2.ReleaseResponse(released=released)

    @unary
    async def GetAllocation(self, request: ipam_pb2.GetAllocationRequest, context: Context) -> ipam_pb2.Allocation:
        pool, _ = self._pool(request.pool)
        try:
            address = int_to_ip(ip_to_int(request.address, "address"))
        except ApiError:
            raise invalid(f"address: {request.address!r} is not an IPv4 address") from None
        kv = await self.etcd.get(store.address_key(pool.name, address))
        if kv is None:
            raise not_found(f"address {address} of pool {pool.name} is not allocated")
        alloc = store.decode_allocation(kv)
        await self._fill_lease(alloc)
        return alloc

    async def _fill_lease(self, alloc: ipam_pb2.Allocation) -> None:
        if alloc.owner.node:
            alloc.node_lease_alive = await self.etcd.get(NODE_LEASES.key(alloc.owner.node)) is not None

    @unary
    async def ListAllocations(
        self, request: ipam_pb2.ListAllocationsRequest, context: Context
    ) -> ipam_pb2.ListAllocationsResponse:
        limit = page_size(request.page_size, *PAGES)
        if request.pool:
            self._pool(request.pool)
        prefix = IPAM_ADDRESSES.scope_prefix(request.pool) if request.pool else IPAM_ADDRESSES.prefix
        start = request.page_token.encode()
        resp = ipam_pb2.ListAllocationsResponse()
        alive: dict[str, bool] = {}
        while True:
            kvs, more, _ = await self.etcd.list_page(prefix, start, limit=limit)
            for kv in kvs:
                alloc = store.decode_allocation(kv)
                if request.tenant and alloc.owner.tenant != request.tenant:
                    continue
                if request.node and alloc.owner.node != request.node:
                    continue
                if alloc.owner.node:
                    if alloc.owner.node not in alive:
                        alive[alloc.owner.node] = await self.etcd.get(NODE_LEASES.key(alloc.owner.node)) is not None
                    alloc.node_lease_alive = alive[alloc.owner.node]
                resp.allocations.append(alloc)
                if len(resp.allocations) == limit:
                    if more or kv is not kvs[-1]:
                        resp.next_page_token = (kv.key + b"\0").decode()
                    return resp
            if not more or not kvs:
                return resp
            start = kvs[-1].key + b"\0"
