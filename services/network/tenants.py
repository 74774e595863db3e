"""Tenants and their default network: created on first use."""

from __future__ import annotations

import asyncio
import ipaddress

from pinet.errors import exhausted
from pinet.etcd.client import Etcd, key_missing, op_put
from pinet.etcd.keyspace import TENANTS, VNIS
from pinet.ipam.v1 import ipam_pb2
from pinet.meta import now
from pinet.network.v1 import objects_pb2
from pinet.services.ipam.pools import DEFAULT_CIDR, DEFAULT_NETWORK, DEFAULT_SERVICE_CIDR
from pinet.services.network import validation
from pinet.services.network.ipam_client import IpamClient
from pinet.services.network.view import ClusterView

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
