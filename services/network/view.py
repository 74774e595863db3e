"""The network service's watched view of the cluster: one informer per kind,
with the indexes that scheduling and the controllers look things up by."""

from __future__ import annotations

from collections import Counter, defaultdict

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, Informer
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
)

Scope = tuple[str, str]  # (tenant, namespace)


class ClusterView:
    def __init__(self, etcd: Etcd) -> None:
        self.tenants: Informer[objects_pb2.Tenant] = Informer(etcd, TENANTS.prefix, TENANTS.decode, "tenants")
        self.nodes: Informer[objects_pb2.Node] = Informer(etcd, NODES.prefix, NODES.decode, "nodes")
        self.node_leases: Informer[objects_pb2.Node] = Informer(
            etcd, NODE_LEASES.prefix, NODE_LEASES.decode, "node-leases"
        )
        self.pods: Informer[objects_pb2.Pod] = Informer(etcd, PODS.prefix, PODS.decode, "pods")
        self.services: Informer[objects_pb2.Service] = Informer(etcd, SERVICES.prefix, SERVICES.decode, "services")
        self.endpoints: Informer[objects_pb2.Endpoints] = Informer(
            etcd, ENDPOINTS.prefix, ENDPOINTS.decode, "endpoints"
        )
        self.deployments: Informer[objects_pb2.Deployment] = Informer(
            etcd, DEPLOYMENTS.prefix, DEPLOYMENTS.decode, "deployments"
        )
        self.node_ports: Informer[objects_pb2.NodePortClaim] = Informer(
            etcd, NODE_PORTS.prefix, NODE_PORTS.decode, "node-ports"
        )
        # What the agents report of the pods they wired (podstatus.py).
        self.pod_network: Informer[objects_pb2.Pod] = Informer(
            etcd, POD_NETWORK.prefix, POD_NETWORK.decode, "pod-network"
        )
        self.all = (
            self.tenants, self.nodes, self.node_leases, self.pods, self.services, self.endpoints, self.deployments,
            self.node_ports, self.pod_network,
        )  # fmt: skip
        # Indexes kept by the informers' own events.
        self.pods_by_scope: dict[Scope, dict[str, objects_pb2.Pod]] = defaultdict(dict)
        self.services_by_scope: dict[Scope, dict[str, objects_pb2.Service]] = defaultdict(dict)
        self.pods_per_node: Counter[str] = Counter()
        self.pods.subscribe(self._index_pod)
        self.services.subscribe(self._index_service)

    async def start(self) -> None:
        for informer in self.all:
            informer.start()
        for informer in self.all:
            await informer.wait_synced()

    async def stop(self) -> None:
        for informer in self.all:
            await informer.stop()

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
