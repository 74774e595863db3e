"""What one host's load balancer should program, computed from the API
objects (pure logic, the shared model both kernel backends translate).

Per tenant router on this host: the virtual services (cluster IPs, node
ports on the router's transit address, floating IPs) and their real
servers. Per host namespace: where node ports and the floating IPs this host
answers for are sent (to a local router, or on to a host that has one).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pinet.api.network.v1 import objects_pb2
from pinet.hostnet import names
from pinet.objects import protocol as transport

DEFAULT_AFFINITY_TIMEOUT = 10800

# Service types that also get a node port on every host.
NODE_PORT_TYPES = (objects_pb2.SERVICE_TYPE_NODE_PORT, objects_pb2.SERVICE_TYPE_LOAD_BALANCER)


class Frontend(enum.Enum):
    CLUSTER_IP = "cluster-ip"
    NODE_PORT = "node-port"
    FLOATING_IP = "floating-ip"


class Scheduler(enum.Enum):
    ROUND_ROBIN = "rr"
    LEAST_CONNECTION = "lc"
    SOURCE_HASH = "sh"


@dataclass(frozen=True, order=True)
class RealServer:
    ip: str
    port: int
    weight: int = 1
    # On another host: traffic from outside the tenant network must then be
    # source-NATed so that the reply comes back through this router.
    remote: bool = False


VsKey = tuple[str, str, int]  # (virtual IP, "tcp" | "udp", port)


@dataclass(frozen=True)
class VirtualService:
    tenant: str
    service: str  # namespace/name
    frontend: Frontend
    vip: str
    protocol: str
    port: int
    scheduler: Scheduler = Scheduler.ROUND_ROBIN
    persistence: int = 0  # ClientIP affinity timeout in seconds; 0: none
    real_servers: tuple[RealServer, ...] = ()

    @property
    def key(self) -> VsKey:
        return (self.vip, self.protocol, self.port)

    @property
    def external(self) -> bool:
        return self.frontend is not Frontend.CLUSTER_IP

    def digest(self) -> str:
        """Changes whenever anything the kernel holds for it would change."""
        text = repr((self.key, self.frontend.value, self.scheduler.value, self.persistence, self.real_servers))
        return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RouterLb:
    """The load balancing inside one tenant's router namespace on this host."""

    tenant: str
    vni: int
    netns: str
    service_cidr: str
    snat_ip: str  # names.router_identity of this host, for outside traffic sent to another host
    services: Mapping[VsKey, VirtualService] = field(default_factory=dict)

    @property
    def transit_router(self) -> str:
        return names.transit(self.vni)[1]


@dataclass(frozen=True)
class NodePortTarget:
    """Where the host sends a node port: the local router's transit address,
    or (no router of the tenant here) other hosts that have endpoints."""

    protocol: str
    port: int
    local: str = ""
    remote: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostLb:
    underlay_ip: str
    node_ports: Mapping[tuple[str, int], NodePortTarget] = field(default_factory=dict)
    fips: Mapping[str, str] = field(default_factory=dict)  # floating IP -> router transit address


@dataclass(frozen=True)
class Desired:
    routers: dict[int, RouterLb]
    host: HostLb


@dataclass(frozen=True)
class Inputs:
    """The slices of the API objects the model needs."""

    node: str
    services: Iterable[objects_pb2.Service]
    endpoints: Mapping[tuple[str, str, str], objects_pb2.Endpoints]  # (tenant, ns, name)
    bindings: Iterable[objects_pb2.FloatingIPBinding]
    tenants: Mapping[str, objects_pb2.Tenant]
    underlay: Mapping[str, str]  # ready node -> underlay IP
    local_tenants: frozenset[str]  # tenants with a router on this node (pods here)
    scheduler: Scheduler = Scheduler.ROUND_ROBIN
    # This node's own underlay address, known even while its heartbeat lapses
    # (underlay lists ready nodes only; this host keeps forwarding meanwhile).
    own_underlay: str = ""


def compute(i: Inputs) -> Desired:
    routers: dict[int, RouterLb] = {}
    per_router: dict[int, dict[VsKey, VirtualService]] = {}
    node_ports: dict[tuple[str, int], NodePortTarget] = {}
    fip_nodes: dict[str, set[str]] = {}  # floating IP -> nodes with ready endpoints
    fip_tenant: dict[str, str] = {}
    bindings = {(b.tenant, b.namespace, b.service): b for b in i.bindings}
    my_ip = i.own_underlay or i.underlay.get(i.node, "")
    snat = names.router_identity(my_ip) if my_ip else ""
    for tenant_name in sorted(i.local_tenants):
        tenant = i.tenants.get(tenant_name)
        if tenant is None:
            continue
        net = tenant.network
        per_router[net.vni] = {}  # filled below, inside the router
        routers[net.vni] = RouterLb(
            tenant_name, net.vni, names.router_netns(i.node, net.vni), net.service_cidr, snat, per_router[net.vni]
        )
    for svc in i.services:
        meta, spec = svc.metadata, svc.spec
        if not spec.cluster_ip or spec.cluster_ip == "None" or spec.type == objects_pb2.SERVICE_TYPE_EXTERNAL_NAME:
            continue
        tenant = i.tenants.get(meta.tenant)
        if tenant is None:
            continue
        ref = (meta.tenant, meta.namespace, meta.name)
        eps = i.endpoints.get(ref)
        ready = [e for e in eps.endpoints if e.ready] if eps is not None else []
        endpoint_nodes = {e.node_name for e in ready if e.node_name in i.underlay}
        vni = tenant.network.vni
        local = vni in per_router
        affinity = spec.session_affinity == objects_pb2.SESSION_AFFINITY_CLIENT_IP
        persistence = (spec.session_affinity_timeout_seconds or DEFAULT_AFFINITY_TIMEOUT) if affinity else 0
        binding = bindings.get(ref)
        if binding is not None and endpoint_nodes:
            fip_nodes.setdefault(binding.address, set()).update(endpoint_nodes)
            fip_tenant[binding.address] = meta.tenant
        for port in spec.ports:
            protocol = transport.kernel_name(port.protocol)
            if protocol is None:
                continue
            servers = tuple(sorted(_real_servers(ready, port, protocol, i.node)))
            nodeport = port.node_port if spec.type in NODE_PORT_TYPES else 0
            if nodeport and servers:
                remote = tuple(sorted(i.underlay[n] for n in endpoint_nodes if n != i.node))
                node_ports[(protocol, nodeport)] = NodePortTarget(
                    protocol, nodeport, local=names.transit(vni)[1] if local else "", remote=remote
                )
            if not local or not servers:
                continue
            frontends = [(Frontend.CLUSTER_IP, spec.cluster_ip, port.port)]
            if nodeport:
                frontends.append((Frontend.NODE_PORT, names.transit(vni)[1], nodeport))
            if binding is not None:
                frontends.append((Frontend.FLOATING_IP, binding.address, port.port))
            for frontend, vip, vport in frontends:
                vs = VirtualService(
                    meta.tenant, f"{meta.namespace}/{meta.name}", frontend, vip, protocol, vport,
                    i.scheduler, persistence, servers,
                )  # fmt: skip
                per_router[vni][vs.key] = vs
    fips: dict[str, str] = {}
    for address, nodes in fip_nodes.items():
        tenant = i.tenants.get(fip_tenant[address])
        if tenant is not None and owner(address, nodes) == i.node and tenant.network.vni in per_router:
            fips[address] = names.transit(tenant.network.vni)[1]
    return Desired(routers, HostLb(my_ip, node_ports, fips))


def _real_servers(
    ready: list[objects_pb2.Endpoint], port: objects_pb2.ServicePort, protocol: str, node: str
) -> Iterable[RealServer]:
    for endpoint in ready:
        for ep_port in endpoint.ports:
            if ep_port.name == port.name and transport.kernel_name(ep_port.protocol) == protocol:
                yield RealServer(endpoint.ip, ep_port.port, 1, endpoint.node_name != node)
                break


def owner(address: str, nodes: Iterable[str]) -> str:
    """The node that answers for a floating IP: highest random weight among
    the nodes with ready endpoints behind it, so every lb picks the same one
    without talking, and a change of nodes moves only the addresses of the
    node that came or went."""
    return max(nodes, key=lambda n: hashlib.sha256(f"{address}/{n}".encode()).digest(), default="")
