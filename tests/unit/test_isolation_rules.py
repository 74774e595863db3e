"""The isolation's pure logic: rule sets, element diffs and what the
kernel's listing is read back as."""

from __future__ import annotations

import pytest

from pinet.api.network.v1 import objects_pb2
from pinet.hostnet import names
from services.netagent import desired, isolation


def test_protected_ranges_always_include_the_platforms_and_merge_the_operators() -> None:
    policy = isolation.Policy(protected=("100.64.3.0/24", "10.0.0.0/8", "10.1.0.0/16"))
    assert policy.blocked_ranges() == ["10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "198.18.0.0/15"]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("", ()), (" 10.0.0.0/8 , 192.168.1.7 ", ("10.0.0.0/8", "192.168.1.7/32")), ("10.1.2.3/8", ("10.0.0.0/8",))],
)
def test_protected_cidrs_flag(text: str, parsed: tuple[str, ...]) -> None:
    assert isolation.parse_protected(text) == parsed


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "fd00::/8", "nonsense"])
def test_a_bad_protected_cidr_names_itself(bad: str) -> None:
    with pytest.raises(isolation.PolicyError, match=f"--protected-cidrs: '{bad}'"):
        isolation.parse_protected(f"10.0.0.0/8,{bad}")


def test_the_base_digest_follows_what_the_rules_say() -> None:
    a = isolation.host_base(isolation.Policy())
    assert a == isolation.host_base(isolation.Policy())
    assert a.marker != isolation.host_base(isolation.Policy(protected=("10.0.0.0/8",))).marker
    r = isolation.router_base("10.244.0.0/16", "10.244.0.1", isolation.Policy())
    assert r.tables == (isolation.ROUTER_TABLE, isolation.BRIDGE_TABLE)
    assert r.script.endswith(f"add chain {isolation.ROUTER_TABLE} {r.marker}\n")
    limited = isolation.router_base("10.244.0.0/16", "10.244.0.1", isolation.Policy(conntrack_limit=9))
    assert "ct count over 9" in limited.script and limited.marker != r.marker


def test_switched_off_the_fences_go_and_the_nat_stays() -> None:
    host = isolation.host_base(isolation.Policy(enabled=False)).script
    assert "masquerade" in host and "vxlan-peers" not in host and "from-routers" not in host
    router = isolation.router_base("10.244.0.0/16", "10.244.0.1", isolation.Policy(enabled=False))
    assert "masquerade" in router.script and "@ports" not in router.script and "ct count" not in router.script


def test_element_diff_adds_and_removes_only_what_differs() -> None:
    path = f"{isolation.BRIDGE_TABLE} ports"
    have: isolation.Elements = {
        path: {("pv1", "02:70:0a:f4:00:0a", "10.244.0.10"), ("pv2", "02:70:0a:f4:00:0b", "10.244.0.11")}
    }
    want: isolation.Elements = {
        path: {("pv1", "02:70:0a:f4:00:0a", "10.244.0.10"), ("pv3", "02:70:0a:f4:00:0c", "10.244.0.12")}
    }
    script, count = isolation.diff_script(want, have)
    assert count == 2
    assert script == (
        f'delete element {path} {{ "pv2" . 02:70:0a:f4:00:0b . 10.244.0.11 }}\n'
        f'add element {path} {{ "pv3" . 02:70:0a:f4:00:0c . 10.244.0.12 }}\n'
    )
    assert isolation.diff_script(want, want) == ("", 0)


def test_the_kernels_listing_is_read_back() -> None:
    listing: list[dict[str, object]] = [
        {"table": {"family": "ip", "name": "pinet-host", "handle": 1}},
        {"chain": {"family": "ip", "table": "pinet-host", "name": "base-0123456789ab"}},
        {"counter": {"family": "ip", "table": "pinet-host", "name": "infra-drops", "packets": 7, "bytes": 420}},
        {"set": {"family": "ip", "table": "pinet-host", "name": "vxlan-peers", "type": ["ipv4_addr", "integer"],
                 "elem": [{"concat": ["192.0.2.12", 4096]}]}},
        {"set": {"family": "ip", "table": "pinet-host", "name": "hosts", "type": "ipv4_addr",
                 "elem": ["192.0.2.11", "192.0.2.12"]}},
    ]  # fmt: skip
    read = isolation.parse(listing)
    assert read.tables == {"ip pinet-host"} and read.markers == ["base-0123456789ab"]
    assert read.counters == {"ip pinet-host infra-drops": 7}
    assert read.sets["ip pinet-host vxlan-peers"] == {("192.0.2.12", "4096")}
    assert read.sets["ip pinet-host hosts"] == {("192.0.2.11",), ("192.0.2.12",)}
    hosts = isolation.HostSets(frozenset({"192.0.2.11", "192.0.2.12"}), frozenset({("192.0.2.12", 4096)}))
    assert isolation.diff_script(isolation.host_elements(hosts), read.sets) == ("", 0)


def _pod(name: str, node: str, ip: str, tenant: str = "t") -> objects_pb2.Pod:
    pod = objects_pb2.Pod()
    pod.metadata.name, pod.metadata.uid, pod.metadata.tenant, pod.metadata.namespace = name, f"uid-{name}", tenant, "ns"
    pod.spec.node_name, pod.status.pod_ip = node, ip
    return pod


def test_the_wiring_lists_each_routers_ports_and_every_hosts_addresses() -> None:
    tenant = objects_pb2.Tenant(name="t")
    net = tenant.network
    net.vni, net.cidr, net.gateway, net.dns_ip = 4096, "10.244.0.0/16", "10.244.0.1", "10.244.0.2"
    pods = [_pod("a", "h1", "10.244.0.10"), _pod("b", "h1", "10.244.0.11"), _pod("c", "h2", "10.244.0.12")]
    underlay = {"h1": "192.0.2.11", "h2": "192.0.2.12", "h3": "192.0.2.13"}
    want = desired.compute("h1", pods, {"t": tenant}, underlay, {}, ["172.30.0.1"])
    router = want.routers[4096]
    assert router.ports == {
        (names.pod_host_ifname("uid-a"), names.pod_mac("10.244.0.10"), "10.244.0.10"),
        (names.pod_host_ifname("uid-b"), names.pod_mac("10.244.0.11"), "10.244.0.11"),
    }
    sets = want.host_sets()
    assert sets.hosts == {"192.0.2.11", "192.0.2.12", "192.0.2.13", "172.30.0.1"}
    assert sets.peers == {("192.0.2.12", 4096)}, "VXLAN of 4096 only from the host with that tenant's pods"
