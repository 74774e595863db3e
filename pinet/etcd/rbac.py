"""Least privilege in etcd: what each identity may read and write.

etcd runs with --client-cert-auth and its auth on; a client's user is its
certificate's common name (`network`, `netagent/host-1`, ...). Each user
has one role of the same name, granted only the key ranges below. A
netagent writes only its own node's keys, the lb and dns read only what
they serve from, and no service but the network API touches tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from pinet.etcd.client import Etcd
from pinet.etcd.errors import translate
from pinet.etcd.keyspace import (
    DEPLOYMENTS,
    ENDPOINTS,
    FIP_BINDINGS,
    IPAM_ADDRESSES,
    IPAM_HANDLES,
    IPAM_POOLS,
    NAMESPACES,
    NETWORK_POLICIES,
    NODE_LEASES,
    NODE_PORTS,
    NODES,
    POD_NETWORK,
    PODS,
    ROOT,
    SERVICES,
    TENANTS,
    TOKENS,
    VNIS,
    Kind,
    leader_key,
)
from pinet.etcd.txn import prefix_end
from pinet.pki.identity import Identity


@dataclass(frozen=True, order=True)
class Grant:
    key: bytes
    #: Empty: the single key; otherwise the end of the range.
    range_end: bytes
    write: bool

    def describe(self) -> str:
        what = self.key.decode() + ("*" if self.range_end else "")
        return f"{'read-write' if self.write else 'read'} {what}"


def _prefix(prefix: bytes, write: bool) -> Grant:
    return Grant(prefix, prefix_end(prefix), write)


def _kinds(kinds: Iterable[Kind], write: bool) -> list[Grant]:  # type: ignore[type-arg]
    return [_prefix(k.prefix, write) for k in kinds]


def _election(name: str) -> Grant:
    # An election's key is watched as a range (the watch of a key's prefix).
    return _prefix(leader_key(name), True)


_EVERY_KIND = (TENANTS, NODES, PODS, DEPLOYMENTS, SERVICES, ENDPOINTS, NETWORK_POLICIES, NAMESPACES, NODE_LEASES,
               FIP_BINDINGS, IPAM_POOLS,
               IPAM_ADDRESSES, IPAM_HANDLES, TOKENS, NODE_PORTS, VNIS, POD_NETWORK)  # fmt: skip


def grants_for(identity: Identity) -> list[Grant]:
    """The key ranges identity's etcd role holds."""
    role, node = identity.role, identity.node
    if role == "network":
        return [
            *_kinds((TENANTS, PODS, DEPLOYMENTS, SERVICES, ENDPOINTS, FIP_BINDINGS, TOKENS, NODE_PORTS, VNIS), True),
            *_kinds((NETWORK_POLICIES, NAMESPACES), True),
            *_kinds((NODES, NODE_LEASES, IPAM_ADDRESSES, POD_NETWORK), False),
            _election("network-controllers"),
        ]
    if role == "ipam":
        return [
            *_kinds((IPAM_POOLS, IPAM_ADDRESSES, IPAM_HANDLES), True),
            *_kinds((TENANTS, PODS, SERVICES, NODE_LEASES, FIP_BINDINGS), False),
            _election("ipam-gc"),
        ]
    if role == "netagent":
        return [
            Grant(NODES.key(node), b"", True),
            Grant(NODE_LEASES.key(node), b"", True),
            _prefix(POD_NETWORK.scope_prefix(node), True),
            *_kinds((TENANTS, NODES, PODS, NETWORK_POLICIES, NAMESPACES), False),
        ]
    if role == "lb":
        return _kinds((TENANTS, NODES, NODE_LEASES, PODS, SERVICES, ENDPOINTS, FIP_BINDINGS), False)
    if role == "dns":
        return _kinds((TENANTS, PODS, SERVICES, ENDPOINTS), False)
    if role == "monitor":
        return _kinds([k for k in _EVERY_KIND if k is not TOKENS], False)
    if role == "admin":
        return [_prefix(ROOT.encode(), True)]
    return []


def users(nodes: Iterable[str]) -> list[Identity]:
    """Every etcd user a cluster with these nodes has (root is etcd's own)."""
    found = [Identity(r) for r in ("network", "ipam", "dns", "monitor", "admin")]
    for node in nodes:
        found += [Identity("netagent", node), Identity("lb", node)]
    return found


async def apply(etcd: Etcd, identities: Iterable[Identity]) -> list[str]:
    """Create or correct each identity's user and role, then turn etcd's
    auth on (idempotent). etcd must be reached as `root`. Returns what
    changed, a line each."""
    changed: list[str] = []
    auth = etcd.auth
    existing_users = set((await _call(auth.UserList(rpc.AuthUserListRequest(), timeout=etcd.timeout))).users)
    existing_roles = set((await _call(auth.RoleList(rpc.AuthRoleListRequest(), timeout=etcd.timeout))).roles)
    if "root" not in existing_users:
        await _call(auth.UserAdd(rpc.AuthUserAddRequest(name="root", options=rpc.UserAddOptions(no_password=True))))
        await _call(auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root")))
        changed.append("user root")
    for identity in identities:
        name = identity.name
        if name not in existing_roles:
            await _call(auth.RoleAdd(rpc.AuthRoleAddRequest(name=name)))
            changed.append(f"role {name}")
        want = set(grants_for(identity))
        have = await _role_grants(etcd, name)
        for grant in sorted(have - want):
            await _call(
                auth.RoleRevokePermission(
                    rpc.AuthRoleRevokePermissionRequest(role=name, key=grant.key, range_end=grant.range_end)
                )
            )
            changed.append(f"role {name}: revoked {grant.describe()}")
        for grant in sorted(want - have):
            perm = rpc.Permission(
                permType=rpc.Permission.READWRITE if grant.write else rpc.Permission.READ,
                key=grant.key,
                range_end=grant.range_end,
            )
            await _call(auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name=name, perm=perm)))
            changed.append(f"role {name}: {grant.describe()}")
        if name not in existing_users:
            opts = rpc.UserAddOptions(no_password=True)
            await _call(auth.UserAdd(rpc.AuthUserAddRequest(name=name, options=opts)))
            await _call(auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=name, role=name)))
            changed.append(f"user {name}")
    # etcd 3.4 has no AuthStatus; enabling auth that is on already is a no-op.
    await _call(auth.AuthEnable(rpc.AuthEnableRequest()))
    return changed


async def _role_grants(etcd: Etcd, role: str) -> set[Grant]:
    resp = await _call(etcd.auth.RoleGet(rpc.AuthRoleGetRequest(role=role)))
    return {Grant(p.key, p.range_end, p.permType == rpc.Permission.READWRITE) for p in resp.perm}


async def _call(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except grpc.aio.AioRpcError as exc:
        raise translate(exc) from exc
