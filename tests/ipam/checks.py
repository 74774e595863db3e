"""Consistency checks of the ipam's keys in etcd."""

from __future__ import annotations

from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import IPAM_ADDRESSES, IPAM_HANDLES


async def assert_consistent(etcd: Etcd, pool: str) -> dict[str, str]:
    """Every address key has its handle key and the other way round, both
    naming each other: no address owned twice, none leaked. Returns
    handle -> address."""
    addresses, _ = await etcd.list_prefix(IPAM_ADDRESSES.scope_prefix(pool))
    handles, _ = await etcd.list_prefix(IPAM_HANDLES.scope_prefix(pool))
    by_address = {IPAM_ADDRESSES.parts(kv.key)[1]: IPAM_ADDRESSES.decode(kv.value) for kv in addresses}
    by_handle = {IPAM_HANDLES.parts(kv.key)[1]: IPAM_HANDLES.decode(kv.value) for kv in handles}
    for address, alloc in by_address.items():
        assert alloc.address == address
        held = by_handle.get(alloc.owner.handle)
        assert held is not None, f"{address} is marked used but no owner handle holds it (leaked)"
        assert held.address == address, f"handle {alloc.owner.handle} and address {address} disagree"
    for handle, alloc in by_handle.items():
        assert alloc.owner.handle == handle
        assert alloc.address in by_address, f"handle {handle} holds {alloc.address}, which is not marked used"
    assert len(by_address) == len(by_handle)
    return {handle: alloc.address for handle, alloc in by_handle.items()}
