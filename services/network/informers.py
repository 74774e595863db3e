"""The network service's watched view of the cluster: one informer per kind,
with the indexes that scheduling and the controllers look things up by."""

from __future__ import annotations

from collections import Counter, defaultdict

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, InformerSet
from pinet.etcd.keyspace import (
    DEPLOYMENTS,
    ENDPOINTS,
    NODE_LEASES,
    NODE_PORTS,
    NODES,
    POD_NETWORK,
    PODS,
    SERVICES,
    TENANTS,
    TOKENS,
)

Scope = tuple[str, str]  # (tenant, namespace)


class ClusterView:
    def __init__(self, etcd: Etcd) -> None:
        self.informers = InformerSet(etcd, "network")
        self.tenants = self.informers.follow(TENANTS)
        self.nodes = self.informers.follow(NODES)
        self.node_leases = self.informers.follow(NODE_LEASES)
        self.pods = self.informers.follow(PODS)
        self.services = self.informers.follow(SERVICES)
        self.endpoints = self.informers.follow(ENDPOINTS)
        self.deployments = self.informers.follow(DEPLOYMENTS)
        self.node_ports = self.informers.follow(NODE_PORTS)
        # What the agents report of the pods they wired (pinet.objects.podnetwork).
        self.pod_network = self.informers.follow(POD_NETWORK)
        self.tokens = self.informers.follow(TOKENS)  # fmt: skip
        # Indexes kept by the informers' own events.
        self.pods_by_scope: dict[Scope, dict[str, objects_pb2.Pod]] = defaultdict(dict)
        self.services_by_scope: dict[Scope, dict[str, objects_pb2.Service]] = defaultdict(dict)
        self.pods_per_node: Counter[str] = Counter()
        self.pods.subscribe(self._index_pod)
        self.services.subscribe(self._index_service)

    async def start(self) -> None:
        await self.informers.start()

    async def stop(self) -> None:
        await self.informers.stop()

    def node_ready(self, name: str) -> bool:
        return bool(name) and NODE_LEASES.key(name) in self.node_leases

    def ready_nodes(self) -> list[str]:
        return [n.name for n in self.nodes.values() if self.node_ready(n.name)]

    def _index_pod(self, event: Event[objects_pb2.Pod]) -> None:
        tenant, namespace, name = PODS.parts(event.key)
        scope = self.pods_by_scope[(tenant, namespace)]
        if event.old is not None:
            self.pods_per_node[event.old.spec.node_name] -= 1
        if event.type is EventType.DELETED:
            scope.pop(name, None)
        else:
            scope[name] = event.obj
            self.pods_per_node[event.obj.spec.node_name] += 1

    def _index_service(self, event: Event[objects_pb2.Service]) -> None:
        tenant, namespace, name = SERVICES.parts(event.key)
        scope = self.services_by_scope[(tenant, namespace)]
        if event.type is EventType.DELETED:
            scope.pop(name, None)
        else:
            scope[name] = event.obj
