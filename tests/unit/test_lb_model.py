"""The lb's pure logic: what a host programs, and the smallest nftables
transaction between two layouts."""

from __future__ import annotations

from pinet.api.network.v1 import objects_pb2
from pinet.hostnet import names
from services.lb import host
from services.lb.backends import nftrules
from services.lb.model import Frontend, RealServer, compute, owner
from tests.helpers.lb_objects import eps, inputs, svc


def test_cluster_ip_uses_ready_endpoints_and_marks_remote_ones() -> None:
    want = compute(inputs([svc("web")], [eps("web", ("10.244.0.5", "h1", True), ("10.244.0.6", "h2", True),
                                                ("10.244.0.7", "h3", False))]))  # fmt: skip
    r = want.routers[4096]
    assert r.netns == names.router_netns("h1", 4096) and r.snat_ip == names.router_identity("192.0.2.11")
    vs = r.services[("10.244.240.10", "tcp", 80)]
    assert vs.frontend is Frontend.CLUSTER_IP
    assert vs.real_servers == (RealServer("10.244.0.5", 8000, 1, False), RealServer("10.244.0.6", 8000, 1, True))


def test_headless_external_name_and_tenants_without_a_router_here_program_nothing() -> None:
    headless = svc("h", ip="None")
    want = compute(inputs([headless, svc("web")], [eps("web", ("10.244.0.5", "h2", True))], local=frozenset()))
    assert want.routers == {}
    assert want.host.node_ports == {}


def test_node_port_goes_to_the_local_router_or_on_to_hosts_with_endpoints() -> None:
    np = svc("np", objects_pb2.SERVICE_TYPE_NODE_PORT, node_port=30080)
    endpoints = [eps("np", ("10.244.0.5", "h2", True), ("10.244.0.6", "h3", True))]
    here = compute(inputs([np], endpoints))
    target = here.host.node_ports[("tcp", 30080)]
    assert target.local == names.transit(4096)[1]
    assert ("100.64.0.2", "tcp", 30080) in here.routers[4096].services
    elsewhere = compute(inputs([np], endpoints, local=frozenset()))
    assert elsewhere.host.node_ports[("tcp", 30080)].remote == ("192.0.2.12", "192.0.2.13")


def test_floating_ip_is_answered_by_one_node_with_endpoints() -> None:
    lb = svc("lb", objects_pb2.SERVICE_TYPE_LOAD_BALANCER, node_port=30081)
    binding = objects_pb2.FloatingIPBinding(address="203.0.113.5", tenant="a", namespace="default", service="lb")
    endpoints = [eps("lb", ("10.244.0.5", "h1", True), ("10.244.0.6", "h2", True))]
    chosen = owner("203.0.113.5", ["h1", "h2"])
    for node in ("h1", "h2"):
        want = compute(inputs([lb], endpoints, node=node, bindings=(binding,)))
        assert ("203.0.113.5", "tcp", 80) in want.routers[4096].services, "every router can serve it"
        assert ("203.0.113.5" in want.host.fips) == (node == chosen), "only the owner routes and answers ARP"


def test_owner_moves_only_addresses_of_the_node_that_left() -> None:
    addresses = [f"203.0.113.{i}" for i in range(1, 60)]
    before = {a: owner(a, ["h1", "h2", "h3"]) for a in addresses}
    after = {a: owner(a, ["h1", "h2"]) for a in addresses}
    assert all(after[a] == before[a] for a in addresses if before[a] != "h3")
    assert len(set(before.values())) == 3


def test_plan_touches_only_what_changed() -> None:
    two = compute(inputs([svc("web"), svc("api", ip="10.244.240.11")],
                         [eps("web", ("10.244.0.5", "h1", True), ("10.244.0.6", "h2", True)),
                          eps("api", ("10.244.0.9", "h1", True))])).routers[4096]  # fmt: skip
    base = nftrules.base_script(two.snat_ip, "up0")
    want = nftrules.layout(two, base.marker)
    script, changes = nftrules.plan(want, nftrules.Layout(), base.script)
    assert "base rules" in changes and "add element ip pinet-lb services" in script
    assert want.hairpin == {"10.244.0.5", "10.244.0.9"} and want.remote == {"10.244.0.6"}
    assert nftrules.plan(want, want, base.script) == ("", [])
    # web scales to one: its second slot goes, the service now picks among 1.
    one = compute(inputs([svc("web"), svc("api", ip="10.244.240.11")],
                         [eps("web", ("10.244.0.5", "h1", True)), eps("api", ("10.244.0.9", "h1", True))]))  # fmt: skip
    after = nftrules.layout(one.routers[4096], base.marker)
    script, changes = nftrules.plan(after, want, base.script)
    assert changes == ["~10.244.240.10:80/tcp"]
    assert "10.244.240.11" not in script, "the other service is untouched"
    assert "delete element ip pinet-lb backends { 10.244.240.10 . tcp . 80 . 2 }" in script
    assert "delete element ip pinet-lb remote { 10.244.0.6 }" in script
    assert nftrules.unused_chains(after, want) == ["pick-2"], "dropped at the next full sync"


def test_affinity_chains_remember_the_slot_with_the_timeout() -> None:
    r = compute(inputs([svc("s", affinity=True)], [eps("s", ("10.244.0.5", "h1", True), ("10.244.0.6", "h1", True))]))
    base = nftrules.base_script("", "up0")
    layout = nftrules.layout(r.routers[4096], base.marker)
    assert layout.services[("10.244.240.10", "tcp", 80)] == "aff-2-10800"
    script = nftrules.chain_script("aff-2-10800")
    assert "update @affinity" in script and "timeout 10800s" in script and "meta mark > 2 meta mark set 0" in script


def test_host_plan_forwards_node_ports() -> None:
    np = svc("np", objects_pb2.SERVICE_TYPE_NODE_PORT, node_port=30080)
    want = compute(inputs([np], [eps("np", ("10.244.0.5", "h2", True))], local=frozenset()))
    base = host.base_script("192.0.2.11")
    layout = host.layout(want.host, base.marker)
    assert layout.nodeports == {("tcp", 30080): "fwd-1"}
    assert layout.remote == {("tcp", 30080, 1): ("192.0.2.12", 30080)}
    script = host.plan(layout, host.HostLayout(), base.script)
    assert "add chain ip pinet-lb fwd-1" in script and "tcp . 30080 . 1 : 192.0.2.12 . 30080" in script


def test_one_service_changes_are_planned_alone_and_shared_addresses_counted() -> None:
    shared = ("10.244.0.5", "h1", True)
    both = compute(inputs([svc("web"), svc("api", ip="10.244.240.11")], [eps("web", shared), eps("api", shared)]))
    router = both.routers[4096]
    have = nftrules.layout(router, "base-x")
    web_key, api_key = ("10.244.240.10", "tcp", 80), ("10.244.240.11", "tcp", 80)
    script, changes = nftrules.plan_changes(have, {web_key: None})
    assert changes == ["-10.244.240.10:80/tcp"]
    assert "hairpin" not in script, "api still uses 10.244.0.5"
    assert "10.244.240.11" not in script
    script, changes = nftrules.plan_changes(have, {api_key: None})
    assert "delete element ip pinet-lb hairpin { 10.244.0.5 . 10.244.0.5 }" in script
    assert have.services == {} and have.backends == {} and not have.hairpin and not have.refs
    # Adding back gives what a full plan from empty would.
    script, _ = nftrules.plan_changes(have, dict(router.services))
    full, _ = nftrules.plan(nftrules.layout(router, "base-x"), nftrules.Layout(base="base-x", chains=have.chains), "")
    assert sorted(script.split("\n")) == sorted(full.split("\n"))


def test_ipvs_persistence_is_read_from_the_kernels_attributes() -> None:
    """pyroute2 0.9 keeps its own defaults under "flags"/"timeout" of a
    dumped service; the kernel's values are under the attribute names."""
    from services.lb.backends.ipvs import persistence_of

    dumped = {"flags": {"flags": 0, "mask": 0xFFFF}, "timeout": 0}
    assert persistence_of({**dumped, "IPVS_SVC_ATTR_FLAGS": {"flags": 3, "mask": 0xFFFFFFFF},
                           "IPVS_SVC_ATTR_TIMEOUT": 60}) == 60  # fmt: skip
    assert persistence_of({**dumped, "IPVS_SVC_ATTR_FLAGS": {"flags": 2, "mask": 0xFFFFFFFF},
                           "IPVS_SVC_ATTR_TIMEOUT": 60}) == 0  # fmt: skip
    assert persistence_of(dumped) == 0
