"""The ipam garbage collector (runs on the elected replica only).

It frees an address when its owner is gone: a pod or service object that no
longer exists (or exists with another uid), a tenant that was deleted. An
owner may be still being created when its address is allocated, so nothing
younger than the owner grace period is judged. It also reclaims pod
addresses of a node whose agent lease expired, once the node grace period has
passed, unless the pod still exists on another node: then the address moves
with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, InformerSet
from pinet.etcd.keyspace import IPAM_ADDRESSES, NODE_LEASES, PODS, SERVICES, TENANTS
from services.ipam import store
from services.ipam.cache import PoolCache

log = logging.getLogger(__name__)


class Action(enum.Enum):
    KEEP = "keep"
    RELEASE = "release"
    MOVE = "move"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""
    node: str = ""


@dataclass(frozen=True)
class Facts:
    """What the collector knows about one allocation's world."""

    age: float
    # For pod addresses bound to a node: how long its lease has been gone
    # (None while it is alive).
    node_lost_for: float | None
    owner_exists: bool | None  # None: cannot be judged
    # The node of the owning pod if it still exists, "" otherwise.
    pod_node: str = ""
    pod_node_alive: bool = False


def judge(alloc: ipam_pb2.Allocation, facts: Facts, owner_grace: float, node_grace: float) -> Verdict:
    """Pure decision for one allocation."""
    if facts.age < owner_grace:
        return Verdict(Action.KEEP, "young")
    if alloc.owner.kind == ipam_pb2.OWNER_KIND_POD and alloc.owner.node and facts.node_lost_for is not None:
        if facts.node_lost_for < node_grace:
            return Verdict(Action.KEEP, "node lease lost, within grace")
        if facts.owner_exists and facts.pod_node and facts.pod_node != alloc.owner.node and facts.pod_node_alive:
            return Verdict(Action.MOVE, f"pod moved to {facts.pod_node}", facts.pod_node)
        return Verdict(Action.RELEASE, f"node {alloc.owner.node} lost its lease {facts.node_lost_for:.0f}s ago")
    if facts.owner_exists is False:
        return Verdict(Action.RELEASE, f"owner {alloc.owner.name or alloc.owner.handle} no longer exists")
    return Verdict(Action.KEEP)


class GarbageCollector:
    def __init__(self, etcd: Etcd, cache: PoolCache, owner_grace: float, node_grace: float, interval: float) -> None:
        self.etcd = etcd
        self.cache = cache
        self.owner_grace = owner_grace
        self.node_grace = node_grace
        self.interval = interval
        self.informers = InformerSet(etcd, "ipam-gc")
        self.node_leases = self.informers.follow(NODE_LEASES)
        self.pods = self.informers.follow(PODS)
        self.services = self.informers.follow(SERVICES)
        self.tenants = self.informers.follow(TENANTS)
        self._lost_since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self.released = 0
        self.moved = 0
        self.node_leases.subscribe(self._on_node_lease)

    def _on_node_lease(self, event: Event[objects_pb2.Node]) -> None:
        name = NODE_LEASES.parts(event.key)[0]
        if event.type is EventType.DELETED:
            self._lost_since.setdefault(name, time.monotonic())
            self._wake.set()
        else:
            self._lost_since.pop(name, None)

    def _node_lost_for(self, node: str, now: float) -> float | None:
        if NODE_LEASES.key(node) in self.node_leases:
            self._lost_since.pop(node, None)
            return None
        return now - self._lost_since.setdefault(node, now)

    async def run(self) -> None:
        try:
            await self.informers.start()
            while True:
                await self.sweep()
                self._wake.clear()
                timeout = self.interval
                if self._lost_since:
                    # Come back when the earliest lost node's grace ends.
                    now = time.monotonic()
                    ends = min(since + self.node_grace for since in self._lost_since.values())
                    timeout = min(timeout, max(ends - now, 0) + 0.05)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            await self.informers.stop()

    def _facts(self, alloc: ipam_pb2.Allocation, now: float, wall: float) -> Facts:
        age = wall - alloc.allocated_at.ToSeconds() if alloc.HasField("allocated_at") else float("inf")
        owner = alloc.owner
        node_lost_for = None
        if owner.kind == ipam_pb2.OWNER_KIND_POD and owner.node:
            node_lost_for = self._node_lost_for(owner.node, now)
        namespace, sep, name = owner.name.partition("/")
        if owner.kind == ipam_pb2.OWNER_KIND_POD and sep:
            pod = self.pods.get(PODS.key(owner.tenant, namespace, name))
            if pod is None or pod.metadata.uid != owner.handle:
                return Facts(age, node_lost_for, False)
            node = pod.spec.node_name
            alive = bool(node) and NODE_LEASES.key(node) in self.node_leases
            return Facts(age, node_lost_for, True, node, alive)
        if owner.kind == ipam_pb2.OWNER_KIND_SERVICE and sep:
            svc = self.services.get(SERVICES.key(owner.tenant, namespace, name))
            return Facts(age, node_lost_for, svc is not None and svc.metadata.uid == owner.handle)
        if owner.kind == ipam_pb2.OWNER_KIND_FLOATING_IP and owner.tenant:
            return Facts(age, node_lost_for, TENANTS.key(owner.tenant) in self.tenants)
        return Facts(age, node_lost_for, None)

    async def sweep(self) -> None:
        now, wall = time.monotonic(), time.time()
        for key, item in self.cache.addresses.items():
            alloc = IPAM_ADDRESSES.decode(item.obj)
            verdict = judge(alloc, self._facts(alloc, now, wall), self.owner_grace, self.node_grace)
            if verdict.action is Action.KEEP:
                continue
            kv = await self.etcd.get(key)
            if kv is None or kv.mod_revision != item.mod_revision:
                continue  # changed since the cache saw it; judge it next time
            if verdict.action is Action.RELEASE and await store.release_if_unchanged(self.etcd, kv):
                self.released += 1
                log.info("released %s of pool %s: %s", alloc.address, alloc.pool, verdict.reason)
            elif verdict.action is Action.MOVE and await store.move_to_node(self.etcd, kv, verdict.node):
                self.moved += 1
                log.info("kept %s of pool %s: %s", alloc.address, alloc.pool, verdict.reason)
