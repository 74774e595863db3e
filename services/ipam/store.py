"""The ipam's etcd writes. Each is one transaction, so nothing is ever
half-written: an address key and its owner-handle key appear and disappear
together."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from pinet.api.ipam.v1 import ipam_pb2
from pinet.etcd.batch import TxnBatcher
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import FIP_BINDINGS, IPAM_ADDRESSES, IPAM_HANDLES
from pinet.etcd.txn import create_all_request, mod_revision_is, op_delete, op_get_prefix, op_put, prefix_empty
from pinet.etcd.values import KeyValue
from pinet.runtime.errors import ApiError, failed_precondition, permission_denied


class Outcome(enum.Enum):
    CREATED = "created"
    # The owner handle already holds an address (a retry): see allocation.
    HELD = "held"
    # Someone else owns the address.
    TAKEN = "taken"


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    allocation: ipam_pb2.Allocation
    revision: int


# Built by hand on the allocation path: pool names, canonical addresses and
# handles are validated before they get here.
_ADDRESS_PREFIX = IPAM_ADDRESSES.prefix.decode()
_HANDLE_PREFIX = IPAM_HANDLES.prefix.decode()


def address_key(pool: str, address: str) -> bytes:
    return f"{_ADDRESS_PREFIX}{pool}/{address}".encode()


def handle_key(pool: str, handle: str) -> bytes:
    return f"{_HANDLE_PREFIX}{pool}/{handle}".encode()


def decode_allocation(kv: KeyValue) -> ipam_pb2.Allocation:
    alloc = IPAM_ADDRESSES.decode(kv.value)
    alloc.resource_version = kv.mod_revision
    return alloc


async def claim(batcher: TxnBatcher, allocation: ipam_pb2.Allocation) -> Claim:
    """Create address and handle keys if both are absent. When they are
    created, allocation itself gets the resource_version and is returned."""
    akey = address_key(allocation.pool, allocation.address)
    hkey = handle_key(allocation.pool, allocation.owner.handle)
    value = IPAM_ADDRESSES.encode(allocation)
    request = create_all_request([(akey, value), (hkey, value)], read_if_taken=[hkey])
    res = await batcher.txn(request, writes=frozenset((akey, hkey)))
    if res.succeeded:
        allocation.resource_version = res.revision
        return Claim(Outcome.CREATED, allocation, res.revision)
    held = res.kvs(0)
    if held:
        return Claim(Outcome.HELD, decode_allocation(held[0]), res.revision)
    return Claim(Outcome.TAKEN, allocation, res.revision)


async def release(etcd: Etcd, pool: ipam_pb2.Pool, address: str, tenant: str) -> list[str]:
    """Free address. Already free: []. Owned by another tenant (when tenant
    is given): PERMISSION_DENIED. A floating IP with bindings:
    FAILED_PRECONDITION naming the service."""
    akey = address_key(pool.name, address)
    floating = pool.kind == ipam_pb2.POOL_KIND_FLOATING
    bindings = FIP_BINDINGS.scope_prefix(address)
    for _ in range(10):
        kv = await etcd.get(akey)
        if kv is None:
            return []
        alloc = IPAM_ADDRESSES.decode(kv.value)
        if tenant and alloc.owner.tenant != tenant:
            raise permission_denied(f"address {address} of pool {pool.name} belongs to another tenant")
        compares = [mod_revision_is(akey, kv.mod_revision)]
        if floating:
            compares.append(prefix_empty(bindings))
        res = await etcd.txn(
            compares,
            [op_delete(akey), op_delete(handle_key(pool.name, alloc.owner.handle))],
            [op_get_prefix(bindings, limit=1)] if floating else [],
        )
        if res.succeeded:
            return [address]
        if floating and res.kvs(0):
            binding = FIP_BINDINGS.decode(res.kvs(0)[0].value)
            raise failed_precondition(
                f"floating IP {address} is bound to service {binding.namespace}/{binding.service}; "
                "delete that service or remove its loadBalancerIP first"
            )
        # The allocation changed between our read and the transaction: look again.
    raise ApiError(grpc.StatusCode.ABORTED, f"address {address} kept changing while being released; retry")


async def release_if_unchanged(etcd: Etcd, kv: KeyValue) -> bool:
    """The garbage collector's release: only if nobody touched it since."""
    alloc = IPAM_ADDRESSES.decode(kv.value)
    res = await etcd.txn(
        [mod_revision_is(kv.key, kv.mod_revision)],
        [op_delete(kv.key), op_delete(handle_key(alloc.pool, alloc.owner.handle))],
    )
    return res.succeeded


async def move_to_node(etcd: Etcd, kv: KeyValue, node: str) -> bool:
    """Re-home a pod address to the node its pod moved to."""
    alloc = IPAM_ADDRESSES.decode(kv.value)
    alloc.owner.node = node
    value = IPAM_ADDRESSES.encode(alloc)
    res = await etcd.txn(
        [mod_revision_is(kv.key, kv.mod_revision)],
        [op_put(kv.key, value), op_put(handle_key(alloc.pool, alloc.owner.handle), value)],
    )
    return res.succeeded
