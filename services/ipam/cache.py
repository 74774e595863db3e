"""The ipam replica's watched view: pools, their layouts and used addresses."""

from __future__ import annotations

import ipaddress
import logging
import socket

from pinet.api.ipam.v1 import ipam_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, InformerSet
from pinet.etcd.keyspace import IPAM_ADDRESSES, IPAM_POOLS
from pinet.runtime.errors import ApiError
from services.ipam.pools import PoolLayout
from services.ipam.state import PoolState

log = logging.getLogger(__name__)


def _raw(value: bytes) -> bytes:
    # Address values are decoded only when someone reads them.
    return value


class PoolCache:
    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.informers = InformerSet(etcd, "ipam")
        self.pools = self.informers.follow(IPAM_POOLS)
        # Address values are decoded only when someone reads them.
        self.addresses = self.informers.follow_prefix(IPAM_ADDRESSES.prefix, _raw, "addresses")
        self.states: dict[str, PoolState] = {}
        # The pools informer's objects by pool name, for the allocation path.
        self._by_name: dict[str, ipam_pb2.Pool] = {}
        self.pools.subscribe(self._on_pool)
        self.addresses.subscribe(self._on_address)

    async def start(self) -> None:
        await self.informers.start()

    async def stop(self) -> None:
        await self.informers.stop()

    def pool(self, name: str) -> ipam_pb2.Pool | None:
        return self._by_name.get(name)

    def state(self, name: str) -> PoolState | None:
        return self.states.get(name)

    def used_in(self, pool: str) -> set[int]:
        prefix = IPAM_ADDRESSES.scope_prefix(pool)
        return {
            int(ipaddress.IPv4Address(IPAM_ADDRESSES.parts(key)[1])) for key in self.addresses if key.startswith(prefix)
        }

    async def resync(self, pool: str) -> None:
        """Rebuild a pool's used set from etcd itself (when the cache and
        the pool's real fill disagree)."""
        state = self.states.get(pool)
        if state is None:
            return
        kvs, _ = await self.etcd.list_prefix(IPAM_ADDRESSES.scope_prefix(pool), keys_only=True)
        state.replace_used({int(ipaddress.IPv4Address(IPAM_ADDRESSES.parts(kv.key)[1])) for kv in kvs})

    def _on_pool(self, event: Event[ipam_pb2.Pool]) -> None:
        name = event.obj.name
        if event.type is EventType.DELETED:
            self._by_name.pop(name, None)
            self.states.pop(name, None)
            return
        self._by_name[name] = event.obj
        try:
            layout = PoolLayout.from_pool(event.obj)
        except ApiError as exc:
            log.error("pool %s in etcd is invalid and is ignored: %s", name, exc.message)
            self.states.pop(name, None)
            return
        old = self.states.get(name)
        if old is not None and old.layout == layout:
            return
        state = PoolState(layout)
        state.replace_used(self.used_in(name))
        self.states[name] = state

    def _on_address(self, event: Event[bytes]) -> None:
        # On the allocation path for every address of every replica: parse the
        # key by hand rather than through the keyspace's general parser.
        try:
            pool, address = event.key[len(IPAM_ADDRESSES.prefix) :].decode().split("/")
            ip = int.from_bytes(socket.inet_aton(address))
        except (ValueError, OSError):
            log.error("ignoring malformed address key %r", event.key)
            return
        state = self.states.get(pool)
        if state is None:
            return
        if event.type is EventType.DELETED:
            state.mark_free(ip)
        else:
            state.mark_used(ip)
