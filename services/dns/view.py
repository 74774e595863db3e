"""The DNS view: slim projections of services, endpoints and pods, indexed
per tenant by what queries look up (pure logic, fed by informer events)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from pinet.api.network.v1 import objects_pb2
from pinet.objects import protocol


@dataclass(frozen=True)
class Port:
    name: str
    protocol: str  # "tcp" or "udp"
    port: int


@dataclass(frozen=True)
class Endpoint:
    ip: str
    hostname: str
    ready: bool
    ports: tuple[Port, ...]


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str  # "" for headless and ExternalName
    external_name: str
    ports: tuple[Port, ...]
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def headless(self) -> bool:
        return not self.cluster_ip and not self.external_name


def _port(name: str, value: int, number: int) -> Port:
    return Port(name, protocol.kernel_name(value), number)


def project_service(svc: objects_pb2.Service) -> Service:
    headless = svc.spec.cluster_ip in ("", "None")
    external = svc.spec.external_name.rstrip(".") if svc.spec.type == objects_pb2.SERVICE_TYPE_EXTERNAL_NAME else ""
    return Service(
        namespace=svc.metadata.namespace or "default",
        name=svc.metadata.name,
        cluster_ip="" if headless or external else svc.spec.cluster_ip,
        external_name=external,
        ports=tuple(_port(p.name, p.protocol, p.port) for p in svc.spec.ports),
    )


def project_endpoints(ep: objects_pb2.Endpoints) -> tuple[Endpoint, ...]:
    return tuple(
        Endpoint(
            e.ip, e.hostname, e.ready, tuple(Port(p.name, protocol.kernel_name(p.protocol), p.port) for p in e.ports)
        )
        for e in ep.endpoints
    )


@dataclass
class TenantView:
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = field(default_factory=dict)
    # pod IP -> namespaces of pods with that IP
    pod_ips: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    namespaces: set[str] = field(default_factory=set)

    def service(self, namespace: str, name: str) -> Service | None:
        svc = self.services.get((namespace, name))
        if svc is None:
            return None
        if svc.headless:
            return Service(svc.namespace, svc.name, "", "", svc.ports, self.endpoints.get((namespace, name), ()))
        return svc

    def reverse(self, ip: str, zone: str) -> list[str]:
        """PTR targets for ip: service IPs, every endpoint of a headless
        service under its name there (its hostname, or the dashed IP that
        names it when it has none: spec §2.4.3 with §2.1, as CoreDNS), and
        pods (a-b-c-d.<ns>.pod.<zone>)."""
        names = [f"{s.name}.{s.namespace}.svc.{zone}." for s in self.services.values() if s.cluster_ip == ip]
        dashed = ip.replace(".", "-")
        for (ns, name), endpoints in self.endpoints.items():
            svc = self.services.get((ns, name))
            if svc is not None and svc.headless:
                names += [f"{e.hostname or dashed}.{name}.{ns}.svc.{zone}." for e in endpoints if e.ip == ip]
        names += [f"{dashed}.{ns}.pod.{zone}." for ns in sorted(self.pod_ips.get(ip, ()))]
        return names


class View:
    def __init__(self) -> None:
        self.tenants: dict[str, TenantView] = defaultdict(TenantView)
        # Bumped by every change; answers cached under an older one are stale.
        self.version = 0

    def tenant(self, name: str) -> TenantView | None:
        return self.tenants.get(name)

    def put_service(self, tenant: str, svc: objects_pb2.Service) -> None:
        self.version += 1
        view = self.tenants[tenant]
        projected = project_service(svc)
        view.services[(projected.namespace, projected.name)] = projected
        view.namespaces.add(projected.namespace)

    def delete_service(self, tenant: str, namespace: str, name: str) -> None:
        self.version += 1
        view = self.tenants.get(tenant)
        if view is not None:
            view.services.pop((namespace, name), None)

    def put_endpoints(self, tenant: str, ep: objects_pb2.Endpoints) -> None:
        self.version += 1
        view = self.tenants[tenant]
        view.endpoints[(ep.metadata.namespace or "default", ep.metadata.name)] = project_endpoints(ep)

    def delete_endpoints(self, tenant: str, namespace: str, name: str) -> None:
        self.version += 1
        view = self.tenants.get(tenant)
        if view is not None:
            view.endpoints.pop((namespace, name), None)

    def put_pod(self, tenant: str, pod: objects_pb2.Pod, old: objects_pb2.Pod | None) -> None:
        self.version += 1
        view = self.tenants[tenant]
        if old is not None and old.status.pod_ip:
            view.pod_ips[old.status.pod_ip].discard(old.metadata.namespace)
        if pod.status.pod_ip:
            view.pod_ips[pod.status.pod_ip].add(pod.metadata.namespace or "default")
        view.namespaces.add(pod.metadata.namespace or "default")

    def delete_pod(self, tenant: str, pod: objects_pb2.Pod) -> None:
        self.version += 1
        view = self.tenants.get(tenant)
        if view is not None and pod.status.pod_ip:
            view.pod_ips[pod.status.pod_ip].discard(pod.metadata.namespace or "default")
            if not view.pod_ips[pod.status.pod_ip]:
                del view.pod_ips[pod.status.pod_ip]
