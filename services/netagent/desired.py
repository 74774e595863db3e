"""What one host's wiring should be, computed from the API objects (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pinet.api.network.v1 import objects_pb2
from pinet.hostnet import names
from services.netagent import isolation

# Pods the container runtime gives a namespace to (through CNI) carry this
# annotation; the agent then waits for Attach instead of making one.
RUNTIME_NETNS = "pinet.io/netns"


@dataclass(frozen=True)
class PodWiring:
    uid: str
    tenant: str
    namespace: str
    name: str
    vni: int
    ip: str
    prefix_len: int
    gateway: str
    # Service addresses lie inside the pod network; this route sends them to
    # the router (which load-balances them) instead of ARPing for them.
    service_cidr: str
    dns_ip: str
    mac: str
    netns: str  # a name under /run/netns, or an absolute path given by a runtime
    agent_owned: bool
    host_ifname: str

    @property
    def address_cidr(self) -> str:
        return f"{self.ip}/{self.prefix_len}"


@dataclass(frozen=True)
class Peer:
    """A remote pod of the same tenant network, behind another host's VTEP."""

    ip: str
    mac: str
    vtep: str


@dataclass(frozen=True)
class RouterWiring:
    tenant: str
    vni: int
    netns: str
    cidr: str
    gateway: str
    dns_ip: str
    mac: str
    transit_host: str
    transit_router: str
    vteps: frozenset[str] = field(default_factory=frozenset)  # remote hosts with this tenant's pods
    peers: frozenset[Peer] = field(default_factory=frozenset)
    # The same tenant's routers on other hosts, at their names.router_identity
    # address, reached over the VXLAN: the lb source-NATs traffic from outside
    # to that address when it sends it to a pod on another host.
    peer_routers: frozenset[Peer] = field(default_factory=frozenset)
    # The local pods' ports on the bridge, each allowed only its own MAC
    # and address (isolation.py).
    ports: frozenset[isolation.Port] = field(default_factory=frozenset)

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.cidr).prefixlen


@dataclass(frozen=True)
class HostWiring:
    routers: dict[int, RouterWiring]
    pods: dict[str, PodWiring]
    hosts: frozenset[str] = frozenset()  # every node's underlay and other addresses

    def host_sets(self) -> isolation.HostSets:
        """The host's guard elements: every host's address, and the (host,
        VNI) pairs VXLAN is accepted from."""
        peers = frozenset((vtep, r.vni) for r in self.routers.values() for vtep in r.vteps)
        return isolation.HostSets(self.hosts, peers)


def compute(
    node: str,
    pods: Iterable[objects_pb2.Pod],
    tenants: Mapping[str, objects_pb2.Tenant],
    underlay: Mapping[str, str],
    attached: Mapping[str, str],
    host_addresses: Iterable[str] = (),
) -> HostWiring:
    """node: this host. underlay: node -> underlay IP of every node.
    attached: pod uid -> namespace path that a runtime gave through Attach.
    host_addresses: the other addresses of every host."""
    local: dict[str, PodWiring] = {}
    remote: dict[str, list[objects_pb2.Pod]] = {}
    for pod in pods:
        if not pod.status.pod_ip or pod.metadata.HasField("deletion_timestamp"):
            continue
        tenant = tenants.get(pod.metadata.tenant)
        if tenant is None:
            continue
        if pod.spec.node_name != node:
            remote.setdefault(pod.metadata.tenant, []).append(pod)
            continue
        runtime = pod.metadata.annotations.get(RUNTIME_NETNS) == "runtime"
        netns = attached.get(pod.metadata.uid, "") if runtime else names.pod_netns(node, pod.metadata.uid)
        if not netns:
            continue  # waits for the runtime's Attach
        net = tenant.network
        local[pod.metadata.uid] = PodWiring(
            uid=pod.metadata.uid,
            tenant=pod.metadata.tenant,
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            vni=net.vni,
            ip=pod.status.pod_ip,
            prefix_len=ipaddress.IPv4Network(net.cidr).prefixlen,
            gateway=net.gateway,
            service_cidr=net.service_cidr,
            dns_ip=net.dns_ip,
            mac=names.pod_mac(pod.status.pod_ip),
            netns=netns,
            agent_owned=not runtime,
            host_ifname=names.pod_host_ifname(pod.metadata.uid),
        )
    routers: dict[int, RouterWiring] = {}
    ports: dict[int, set[isolation.Port]] = {}
    for pw in local.values():
        ports.setdefault(pw.vni, set()).add((pw.host_ifname, pw.mac, pw.ip))
    for pw in local.values():
        if pw.vni in routers:
            continue
        net = tenants[pw.tenant].network
        peers = frozenset(
            names_peer for p in remote.get(pw.tenant, []) if (names_peer := _peer(p, underlay)) is not None
        )
        host_ip, router_ip = names.transit(net.vni)
        peer_nodes = {p.spec.node_name for p in remote.get(pw.tenant, []) if p.spec.node_name in underlay}
        peer_routers = frozenset(
            Peer(names.router_identity(underlay[n]), names.router_mac(n, net.vni), underlay[n]) for n in peer_nodes
        )
        routers[net.vni] = RouterWiring(
            tenant=pw.tenant,
            vni=net.vni,
            netns=names.router_netns(node, net.vni),
            cidr=net.cidr,
            gateway=net.gateway,
            dns_ip=net.dns_ip,
            mac=names.router_mac(node, net.vni),
            transit_host=host_ip,
            transit_router=router_ip,
            vteps=frozenset(p.vtep for p in peers),
            peers=peers,
            peer_routers=peer_routers,
            ports=frozenset(ports[net.vni]),
        )
    return HostWiring(routers, local, frozenset(underlay.values()) | frozenset(host_addresses))


def _peer(pod: objects_pb2.Pod, underlay: Mapping[str, str]) -> Peer | None:
    vtep = underlay.get(pod.spec.node_name)
    if not vtep:
        return None
    return Peer(pod.status.pod_ip, names.pod_mac(pod.status.pod_ip), vtep)
