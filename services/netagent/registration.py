"""A node's registration and heartbeat, as its agent keeps them.

The Node object lives until the node is removed; the heartbeat key
/pinet/v1/nodeleases/<node> lives only while the agent's lease does, so its
absence is how everyone else learns that the host stopped answering.
"""

from __future__ import annotations

import asyncio
import logging

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.errors import EtcdError
from pinet.etcd.keyspace import NODE_LEASES, NODES
from pinet.etcd.lease import Lease
from pinet.objects.meta import now
from pinet.objects.store import for_storage, update
from pinet.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def _value(node: objects_pb2.Node, name: str) -> object:
    value = getattr(node, name)
    return value if isinstance(value, str) else dict(value) if name == "labels" else list(value)


class NodeRegistration:
    def __init__(self, etcd: Etcd, node: objects_pb2.Node, ttl: int = 5) -> None:
        self.etcd = etcd
        self.node = node
        self.ttl = ttl
        self.lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._register()
        await self._heartbeat()
        self._task = asyncio.create_task(self._keep(), name=f"node:{self.node.name}")

    async def _register(self) -> None:
        key = NODES.key(self.node.name)
        wanted = self.node

        def mutate(existing: objects_pb2.Node) -> bool:
            fields = ("underlay_ip", "agent_address", "labels", "host_addresses")
            changed = any(_value(existing, f) != _value(wanted, f) for f in fields)
            existing.underlay_ip, existing.agent_address = wanted.underlay_ip, wanted.agent_address
            existing.labels.clear()
            existing.labels.update(wanted.labels)
            existing.host_addresses[:] = wanted.host_addresses
            return changed

        if await update(self.etcd, NODES, key, mutate) is None:
            fresh = for_storage(self.node)
            fresh.creation_timestamp.CopyFrom(now())
            await self.etcd.create(key, NODES.encode(fresh))

    async def set_host_addresses(self, addresses: list[str]) -> None:
        """The host's addresses changed (an interface came or went)."""
        if list(self.node.host_addresses) != addresses:
            self.node.host_addresses[:] = addresses
            await self._register()

    async def _heartbeat(self) -> None:
        self.lease = await Lease(self.etcd, self.ttl).grant()
        beat = objects_pb2.Node(name=self.node.name, underlay_ip=self.node.underlay_ip, last_heartbeat=now())
        await self.etcd.put(NODE_LEASES.key(self.node.name), NODE_LEASES.encode(beat), lease=self.lease.id)

    async def _keep(self) -> None:
        """Re-establish the heartbeat whenever its lease is lost (etcd was
        unreachable for a whole TTL)."""
        while True:
            assert self.lease is not None
            await self.lease.lost.wait()
            log.warning("node %s: heartbeat lease lost; registering again", self.node.name)
            while True:
                try:
                    await self._heartbeat()
                    break
                except EtcdError as exc:
                    log.warning("node %s: cannot heartbeat yet: %s", self.node.name, exc)
                    await asyncio.sleep(1)

    async def stop(self, deregister: bool = False) -> None:
        await cancel_and_wait(self._task)
        if self.lease is not None:
            await self.lease.close()
        if deregister:
            await self.etcd.delete(NODES.key(self.node.name))
