"""Names and addresses derived from IDs (pure)."""

from __future__ import annotations

from pinet.api.network.v1 import objects_pb2
from pinet.hostnet import names
from services.netagent import desired


def test_router_identity_is_per_host_and_outside_every_tenant_network() -> None:
    assert names.router_identity("192.0.2.11") == "198.18.2.11"
    assert names.router_identity("10.1.200.7") == "198.19.200.7"
    identities = {names.router_identity(f"192.0.{i}.{j}") for i in range(2) for j in range(256)}
    assert len(identities) == 512, "unique while hosts share a /15"


def test_routers_know_their_peers_on_hosts_with_the_tenants_pods() -> None:
    tenant = objects_pb2.Tenant(name="a")
    tenant.network.vni, tenant.network.cidr, tenant.network.gateway = 4096, "10.244.0.0/16", "10.244.0.1"
    pods = []
    for i, node in enumerate(("h1", "h2", "h2", "h3")):
        pod = objects_pb2.Pod()
        pod.metadata.tenant, pod.metadata.uid, pod.metadata.name = "a", f"uid-{i}", f"p{i}"
        pod.spec.node_name, pod.status.pod_ip = node, f"10.244.0.{10 + i}"
        pods.append(pod)
    underlay = {"h1": "192.0.2.11", "h2": "192.0.2.12", "h3": "192.0.2.13"}
    wiring = desired.compute("h1", pods, {"a": tenant}, underlay, {})
    router = wiring.routers[4096]
    assert router.vteps == {"192.0.2.12", "192.0.2.13"}
    assert {(p.ip, p.mac, p.vtep) for p in router.peer_routers} == {
        ("198.18.2.12", names.router_mac("h2", 4096), "192.0.2.12"),
        ("198.18.2.13", names.router_mac("h3", 4096), "192.0.2.13"),
    }
