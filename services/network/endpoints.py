"""Which pods serve a service, on which ports (pure logic)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pinet.api.network.v1 import objects_pb2
from pinet.objects import protocol as transport
from services.network.selectors import map_matches


def target_port(port: objects_pb2.ServicePort, pod: objects_pb2.Pod) -> int | None:
    """The pod port a service port sends to; None when a named target port
    is not declared by the pod (that pod then does not serve that port)."""
    if port.target_port_name:
        protocol = transport.effective(port.protocol)
        for container in pod.spec.containers:
            for cp in container.ports:
                if cp.name == port.target_port_name and transport.effective(cp.protocol) == protocol:
                    return cp.container_port
        return None
    return port.target_port or port.port


def pod_ready(pod: objects_pb2.Pod, node_ready: Callable[[str], bool]) -> bool:
    return (
        pod.status.network_ready
        and bool(pod.status.pod_ip)
        and not pod.metadata.HasField("deletion_timestamp")
        and node_ready(pod.spec.node_name)
    )


def compute(
    service: objects_pb2.Service, pods: Iterable[objects_pb2.Pod], node_ready: Callable[[str], bool]
) -> list[objects_pb2.Endpoint]:
    """Endpoints of service among pods (of its tenant and namespace)."""
    out: list[objects_pb2.Endpoint] = []
    if service.spec.type == objects_pb2.SERVICE_TYPE_EXTERNAL_NAME:
        return out
    for pod in pods:
        if not pod.status.pod_ip or not map_matches(service.spec.selector, pod.metadata.labels):
            continue
        ready = pod_ready(pod, node_ready)
        if not ready and not service.spec.publish_not_ready_addresses:
            continue
        endpoint = objects_pb2.Endpoint(
            ip=pod.status.pod_ip,
            node_name=pod.spec.node_name,
            pod_name=pod.metadata.name,
            pod_uid=pod.metadata.uid,
            ready=ready,
        )
        if pod.spec.hostname and pod.spec.subdomain == service.metadata.name:
            endpoint.hostname = pod.spec.hostname
        for port in service.spec.ports:
            resolved = target_port(port, pod)
            if resolved is not None:
                endpoint.ports.append(
                    objects_pb2.EndpointPort(name=port.name, port=resolved, protocol=transport.effective(port.protocol))
                )
        if endpoint.ports or not service.spec.ports:
            out.append(endpoint)
    out.sort(key=lambda e: tuple(int(part) for part in e.ip.split(".")))
    return out
