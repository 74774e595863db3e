"""Hand-built API objects and model inputs for the lb's unit tests."""

from __future__ import annotations

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import objects_pb2
from services.lb.model import Inputs


def tenant(name: str, vni: int) -> objects_pb2.Tenant:
    t = objects_pb2.Tenant(name=name)
    t.network.vni = vni
    t.network.cidr = "10.244.0.0/16"
    t.network.service_cidr = "10.244.240.0/20"
    return t


def svc(name: str, kind: int = objects_pb2.SERVICE_TYPE_CLUSTER_IP, ip: str = "10.244.240.10",
        node_port: int = 0, affinity: bool = False, tenant_name: str = "a") -> objects_pb2.Service:  # fmt: skip
    s = objects_pb2.Service()
    s.metadata.tenant, s.metadata.namespace, s.metadata.name = tenant_name, "default", name
    s.spec.type = kind  # type: ignore[assignment]
    s.spec.cluster_ip = ip
    s.spec.ports.add(name="http", port=80, target_port=8000, node_port=node_port, protocol=meta_pb2.PROTOCOL_TCP)
    if affinity:
        s.spec.session_affinity = objects_pb2.SESSION_AFFINITY_CLIENT_IP
    return s


def eps(name: str, *members: tuple[str, str, bool], tenant_name: str = "a") -> objects_pb2.Endpoints:
    e = objects_pb2.Endpoints()
    e.metadata.tenant, e.metadata.namespace, e.metadata.name = tenant_name, "default", name
    for ip, node, ready in members:
        ep = e.endpoints.add(ip=ip, node_name=node, ready=ready)
        ep.ports.add(name="http", port=8000, protocol=meta_pb2.PROTOCOL_TCP)
    return e


UNDERLAY = {"h1": "192.0.2.11", "h2": "192.0.2.12", "h3": "192.0.2.13"}


def inputs(services: list[objects_pb2.Service], endpoints: list[objects_pb2.Endpoints], node: str = "h1",
           local: frozenset[str] = frozenset({"a"}),
           bindings: tuple[objects_pb2.FloatingIPBinding, ...] = ()) -> Inputs:  # fmt: skip
    return Inputs(
        node=node, services=services,
        endpoints={(e.metadata.tenant, e.metadata.namespace, e.metadata.name): e for e in endpoints},
        bindings=bindings, tenants={"a": tenant("a", 4096), "b": tenant("b", 4097)}, underlay=UNDERLAY,
        local_tenants=local,
    )  # fmt: skip
