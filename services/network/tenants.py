"""Tenants and their default network: created on first use."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from typing import TYPE_CHECKING

import grpc

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import DEPLOYMENTS, NAMESPACES, NETWORK_POLICIES, PODS, SERVICES, TENANTS, VNIS
from pinet.etcd.txn import key_missing, mod_revision_is, op_delete, op_put
from pinet.objects.meta import now
from pinet.runtime.errors import ApiError, aborted, exhausted, failed_precondition, not_found
from services.ipam.pools import (
    DEFAULT_CIDR,
    DEFAULT_NETWORK,
    DEFAULT_SERVICE_CIDR,
    FLOATING_POOL,
    pod_pool_name,
    service_pool_name,
)
from services.network import validation
from services.network.informers import ClusterView
from services.network.ipam_client import IpamClient

if TYPE_CHECKING:
    from services.network.auth import TokenStore

FIRST_VNI = 4096
MAX_VNI = (1 << 24) - 1


def network_defaults(spec: objects_pb2.NetworkSpec) -> objects_pb2.NetworkSpec:
    out = objects_pb2.NetworkSpec()
    out.CopyFrom(spec)
    out.name = out.name or DEFAULT_NETWORK
    out.cidr = out.cidr or DEFAULT_CIDR
    out.service_cidr = out.service_cidr or DEFAULT_SERVICE_CIDR
    net = ipaddress.ip_network(out.cidr, strict=False)
    out.gateway = out.gateway or str(net.network_address + 1)
    out.dns_ip = out.dns_ip or str(net.network_address + 2)
    return out


class Tenants:
    def __init__(self, etcd: Etcd, view: ClusterView, ipam: IpamClient) -> None:
        self.etcd = etcd
        self.view = view
        self.ipam = ipam
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, name: str) -> objects_pb2.Tenant | None:
        return self.view.tenants.get(TENANTS.key(name))

    async def ensure(self, name: str, network: objects_pb2.NetworkSpec | None = None) -> objects_pb2.Tenant:
        """The tenant, created with its network (VNI and address pools) if it
        does not exist yet. Safe to call concurrently from any replica."""
        existing = self.get(name)
        if existing is not None:
            return existing
        validation.dns1123_label(name, "tenant")
        async with self._locks.setdefault(name, asyncio.Lock()):
            existing = self.get(name)
            if existing is not None:
                return existing
            spec = network_defaults(network or objects_pb2.NetworkSpec())
            # Pools first: a tenant that exists always has its pools.
            await self.ipam.call(
                "EnsureNetworkPools",
                ipam_pb2.EnsureNetworkPoolsRequest(
                    tenant=name, network=spec.name, cidr=spec.cidr, service_cidr=spec.service_cidr
                ),
                "network",
            )
            tenant = await self._create(name, spec)
            return tenant

    async def delete(self, name: str, tokens: TokenStore) -> None:
        """Remove an empty tenant: its network's pools, its VNI, its tokens,
        network policies and namespaces' labels go with it. Objects or floating IPs left: FAILED_PRECONDITION."""
        tenant = self.get(name)
        if tenant is None:
            raise not_found(f"tenant {name!r} not found")
        for kind in (PODS, SERVICES, DEPLOYMENTS):
            if await self.etcd.count_prefix(kind.scope_prefix(name)):
                raise failed_precondition(f"tenant {name} still has {kind.name}; delete them first")
        try:
            fips = await self.ipam.call(
                "ListAllocations", ipam_pb2.ListAllocationsRequest(pool=FLOATING_POOL, tenant=name, page_size=1)
            )
        except ApiError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:  # no floating pool: no floating IPs
                raise
            fips = ipam_pb2.ListAllocationsResponse()
        if fips.allocations:
            raise failed_precondition(f"tenant {name} still holds floating IPs; release them first")
        key = TENANTS.key(name)
        kv = await self.etcd.get(key)
        if kv is None:
            raise not_found(f"tenant {name!r} not found")
        vni_key = VNIS.key(str(tenant.network.vni))
        res = await self.etcd.txn([mod_revision_is(key, kv.mod_revision)], [op_delete(key), op_delete(vni_key)])
        if not res.succeeded:
            raise aborted(f"tenant {name} changed while being deleted; retry")
        for pool in (pod_pool_name(name, tenant.network.name), service_pool_name(name, tenant.network.name)):
            with contextlib.suppress(ApiError):  # already gone, or the ipam GC still frees addresses
                await self.ipam.call("DeletePool", ipam_pb2.DeletePoolRequest(name=pool))
        for token_key, item in tokens.informer.items():
            if item.obj.tenant == name:
                await self.etcd.delete(token_key)
        # Configuration that would otherwise fence a new tenant of the same name.
        for prefix in (NETWORK_POLICIES.scope_prefix(name), NAMESPACES.scope_prefix(name)):
            await self.etcd.delete_prefix(prefix)

    async def _create(self, name: str, spec: objects_pb2.NetworkSpec) -> objects_pb2.Tenant:
        key = TENANTS.key(name)
        used = {t.network.vni for t in self.view.tenants.values()}
        vni = FIRST_VNI
        for _ in range(1000):
            while vni in used:
                vni += 1
            if vni > MAX_VNI:
                raise exhausted("no VXLAN network identifier is free")
            spec.vni = vni
            tenant = objects_pb2.Tenant(name=name, network=spec, creation_timestamp=now())
            claim = objects_pb2.VniClaim(vni=vni, tenant=name, network=spec.name)
            res = await self.etcd.txn(
                [key_missing(key), key_missing(VNIS.key(str(vni)))],
                [op_put(key, TENANTS.encode(tenant)), op_put(VNIS.key(str(vni)), VNIS.encode(claim))],
            )
            if res.succeeded:
                await self.view.tenants.wait_revision(res.revision, timeout=10)
                tenant.resource_version = res.revision
                return tenant
            kv = await self.etcd.get(key)
            if kv is not None:  # another replica created it first
                await self.view.tenants.wait_revision(kv.mod_revision, timeout=10)
                return TENANTS.decode(kv.value)
            used.add(vni)  # that VNI was taken meanwhile
        raise RuntimeError("could not claim a VNI after 1000 attempts")
