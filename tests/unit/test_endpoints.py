"""Which pods serve a Service, on which ports (services/network/endpoints.py)."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import objects_pb2
from services.network import endpoints

UDP = meta_pb2.PROTOCOL_UDP


def pod(
    name: str, ip: str, *, labels: dict[str, str] | None = None, ready: bool = True, node: str = "h1",
    ports: tuple[tuple[str, int, int], ...] = (("http", 8080, 0),), hostname: str = "", subdomain: str = "",
    deleting: bool = False,
) -> objects_pb2.Pod:  # fmt: skip
    p = objects_pb2.Pod()
    p.metadata.name, p.metadata.uid = name, f"uid-{name}"
    p.metadata.labels.update({"app": "web"} if labels is None else labels)
    if deleting:
        p.metadata.deletion_timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=1))
    p.spec.node_name, p.spec.hostname, p.spec.subdomain = node, hostname, subdomain
    container = p.spec.containers.add(name="c", image="x")
    for port_name, number, protocol in ports:
        container.ports.add(name=port_name, container_port=number, protocol=protocol)
    p.status.pod_ip, p.status.network_ready = ip, ready
    return p


def service(*ports: objects_pb2.ServicePort, publish: bool = False, name: str = "web") -> objects_pb2.Service:
    s = objects_pb2.Service()
    s.metadata.name = name
    s.spec.selector["app"] = "web"
    s.spec.ports.extend(ports)
    s.spec.publish_not_ready_addresses = publish
    return s


HTTP_BY_NAME = objects_pb2.ServicePort(name="http", port=80, target_port_name="http")
HTTP_BY_NUMBER = objects_pb2.ServicePort(name="web", port=80, target_port=8080)


def ips(eps: list[objects_pb2.Endpoint]) -> list[str]:
    return [e.ip for e in eps]


def every_node_ready(_: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("what", "pods", "svc", "want"),
    [
        ("selected and ready", [pod("a", "10.244.0.10")], service(HTTP_BY_NUMBER), ["10.244.0.10"]),
        ("other labels", [pod("a", "10.244.0.10", labels={"app": "db"})], service(HTTP_BY_NUMBER), []),
        ("no address yet", [pod("a", "")], service(HTTP_BY_NUMBER), []),
        ("not ready", [pod("a", "10.244.0.10", ready=False)], service(HTTP_BY_NUMBER), []),
        ("not ready, published", [pod("a", "10.244.0.10", ready=False)], service(HTTP_BY_NUMBER, publish=True),
         ["10.244.0.10"]),
        ("being deleted", [pod("a", "10.244.0.10", deleting=True)], service(HTTP_BY_NUMBER), []),
        ("on a lost node", [pod("a", "10.244.0.10", node="gone")], service(HTTP_BY_NUMBER), []),
        ("named port missing on the pod", [pod("a", "10.244.0.10", ports=())], service(HTTP_BY_NAME), []),
        ("named port of the other protocol", [pod("a", "10.244.0.10", ports=(("http", 8080, UDP),))],
         service(HTTP_BY_NAME), []),
        ("sorted by address, not text", [pod("a", "10.244.0.100"), pod("b", "10.244.0.9")], service(HTTP_BY_NUMBER),
         ["10.244.0.9", "10.244.0.100"]),
        ("no ports: every selected pod", [pod("a", "10.244.0.10", ports=())], service(), ["10.244.0.10"]),
    ],
)  # fmt: skip
def test_which_pods_serve(what: str, pods: list[objects_pb2.Pod], svc: objects_pb2.Service, want: list[str]) -> None:
    assert ips(endpoints.compute(svc, pods, lambda node: node != "gone")) == want, what


def test_named_target_port_resolves_per_pod() -> None:
    pods = [pod("a", "10.244.0.10", ports=(("http", 8080, 0),)), pod("b", "10.244.0.11", ports=(("http", 9090, 0),))]
    eps = endpoints.compute(service(HTTP_BY_NAME), pods, every_node_ready)
    assert [(e.ip, e.ports[0].port) for e in eps] == [("10.244.0.10", 8080), ("10.244.0.11", 9090)]


def test_hostname_only_under_the_services_subdomain() -> None:
    pods = [pod("a", "10.244.0.10", hostname="db-0", subdomain="web"), pod("b", "10.244.0.11", hostname="db-1")]
    eps = endpoints.compute(service(HTTP_BY_NUMBER), pods, every_node_ready)
    assert [(e.ip, e.hostname) for e in eps] == [("10.244.0.10", "db-0"), ("10.244.0.11", "")]


def test_external_name_has_no_endpoints() -> None:
    svc = service(HTTP_BY_NUMBER)
    svc.spec.type = objects_pb2.SERVICE_TYPE_EXTERNAL_NAME
    assert endpoints.compute(svc, [pod("a", "10.244.0.10")], every_node_ready) == []
