"""The lb's change tracking (services/lb/tracker.py): which reconcile keys
each informer event makes due, and nothing more."""

from __future__ import annotations

from typing import TypeVar

import pytest

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.informer import Event, EventType
from pinet.etcd.keyspace import ENDPOINTS, FIP_BINDINGS, NODE_LEASES, NODES, PODS, SERVICES
from pinet.runtime.reconcile import FULL
from services.lb.keys import HOST, LbKey, Router, ServiceRef
from services.lb.tracker import ChangeTracker
from tests.helpers.lb_objects import eps, svc

T = TypeVar("T")
WEB = ServiceRef("a", "default", "web")
VNIS = {"a": 4096, "b": 4097}


def tracker(local: tuple[str, ...] = ("a",)) -> ChangeTracker:
    services: dict[ServiceRef, objects_pb2.Service] = {}
    t = ChangeTracker("h1", VNIS.get, services.get)
    for tenant in local:
        t.local_pods[tenant] = {f"uid-{tenant}"}
    return t


def added(key: bytes, obj: T, old: T | None = None) -> Event[T]:
    kind = EventType.ADDED if old is None else EventType.MODIFIED
    return Event(kind, key, obj, old, 1)


def deleted(key: bytes, obj: T) -> Event[T]:
    return Event(EventType.DELETED, key, obj, obj, 2)


def pod(tenant: str, uid: str, node: str = "h1", ready: bool = True, ip: str = "10.244.0.5") -> objects_pb2.Pod:
    p = objects_pb2.Pod()
    p.metadata.tenant, p.metadata.namespace, p.metadata.name, p.metadata.uid = tenant, "default", uid, uid
    p.spec.node_name = node
    p.status.network_ready, p.status.pod_ip = ready, ip
    return p


NODE_PORT = objects_pb2.SERVICE_TYPE_NODE_PORT
KEY = SERVICES.key("a", "default", "web")


@pytest.mark.parametrize(
    ("what", "local", "event", "keys"),
    [
        ("ClusterIP Service of a tenant here", ("a",), added(KEY, svc("web")), [WEB]),
        ("ClusterIP Service of a tenant not here", (), added(KEY, svc("web")), []),
        ("node-port Service of a tenant not here", (), added(KEY, svc("web", NODE_PORT, node_port=30080)), [HOST]),
        ("node-port Service here", ("a",), added(KEY, svc("web", NODE_PORT, node_port=30080)), [WEB, HOST]),
        ("node port taken away", ("a",), added(KEY, svc("web"), svc("web", NODE_PORT, node_port=30080)), [WEB, HOST]),
        ("Service deleted", ("a",), deleted(KEY, svc("web")), [WEB]),
    ],
)
def test_service_events(
    what: str, local: tuple[str, ...], event: Event[objects_pb2.Service], keys: list[LbKey]
) -> None:
    assert tracker(local).on_service(event) == keys, what


def test_endpoints_of_a_node_port_service_also_touch_the_host() -> None:
    services = {WEB: svc("web", NODE_PORT, node_port=30080)}
    t = ChangeTracker("h1", VNIS.get, services.get)
    t.local_pods["a"] = {"x"}
    key = ENDPOINTS.key("a", "default", "web")
    assert t.on_endpoints(added(key, eps("web", ("10.244.0.5", "h2", True)))) == [WEB, HOST]
    other = ENDPOINTS.key("a", "default", "other")
    assert t.on_endpoints(added(other, eps("other"))) == [ServiceRef("a", "default", "other")]
    t.local_pods.clear()
    assert t.on_endpoints(added(other, eps("other"))) == []


def test_a_binding_moved_touches_both_services_and_the_host() -> None:
    t = tracker()
    old = objects_pb2.FloatingIPBinding(tenant="a", namespace="default", service="web", address="203.0.113.5")
    new = objects_pb2.FloatingIPBinding(tenant="a", namespace="default", service="api", address="203.0.113.5")
    key = FIP_BINDINGS.key("203.0.113.5", "rule")
    assert t.on_binding(added(key, old)) == [WEB, HOST]
    assert t.on_binding(added(key, new, old)) == [WEB, HOST, ServiceRef("a", "default", "api"), HOST]
    assert t.bindings_of("a") == [new]
    assert t.on_binding(deleted(key, new)) == [ServiceRef("a", "default", "api"), HOST]
    assert t.bindings_of("a") == []


def test_local_pods_make_their_tenant_local_and_only_changes_count() -> None:
    t = tracker(local=())
    key = PODS.key("a", "default", "p1")
    assert t.on_pod(added(key, pod("a", "p1", ready=False))) == []
    assert "a" not in t.local_pods, "a pod not ready yet does not make its tenant local"
    assert t.on_pod(added(key, pod("a", "p1"), pod("a", "p1", ready=False))) == [Router(4096), HOST]
    assert t.on_pod(added(key, pod("a", "p1"), pod("a", "p1"))) == [], "a status change that is not readiness"
    assert t.on_pod(deleted(key, pod("a", "p1"))) == [Router(4096), HOST]
    assert t.local_pods == {}
    assert t.on_pod(added(PODS.key("b", "default", "q"), pod("b", "q", node="h2"))) == [], "another host's pod"
    assert t.on_pod(added(PODS.key("c", "default", "q"), pod("c", "q"))) == [HOST], "a tenant without a VNI yet"


def test_nodes_and_leases_only_on_membership_changes() -> None:
    t = tracker()
    node = objects_pb2.Node(name="h2", underlay_ip="192.0.2.12")
    moved = objects_pb2.Node(name="h2", underlay_ip="192.0.2.99")
    assert t.on_node(added(NODES.key("h2"), node)) == [FULL]
    assert t.on_node(added(NODES.key("h2"), node, node)) == []
    assert t.on_node(added(NODES.key("h2"), moved, node)) == [FULL]
    lease = NODE_LEASES.key("h2")
    assert t.on_lease(added(lease, node)) == [FULL]
    assert t.on_lease(added(lease, node, node)) == [], "a heartbeat"
    assert t.on_lease(deleted(lease, node)) == [FULL]
