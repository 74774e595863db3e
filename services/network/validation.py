"""Validation of API objects with Kubernetes' rules (pure logic).

Every rejection is an INVALID_ARGUMENT whose message starts with the path of
the field at fault, in the manifest's spelling (`spec.ports[0].targetPort`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.objects import protocol as transport
from pinet.runtime.errors import ApiError, invalid

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767
MAX_AFFINITY_TIMEOUT = 86400
DEFAULT_AFFINITY_TIMEOUT = 10800


def fail(path: str, message: str) -> ApiError:
    return invalid(f"{path}: {message}")


def dns1123_label(value: str, path: str) -> None:
    if not value:
        raise fail(path, "required")
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise fail(
            path,
            f"{value!r} must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )


def dns1123_subdomain(value: str, path: str) -> None:
    if not value:
        raise fail(path, "required")
    if len(value) > 253 or not all(DNS1123_LABEL.match(part) and len(part) <= 63 for part in value.split(".")):
        raise fail(
            path,
            f"{value!r} must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "at most 253 characters, each part starting and ending with a letter or digit",
        )


def dns1035_label(value: str, path: str) -> None:
    if not value:
        raise fail(path, "required")
    if len(value) > 63 or not DNS1035_LABEL.match(value):
        raise fail(
            path,
            f"{value!r} must be a DNS-1035 label: at most 63 lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit",
        )


def label_key(key: str, path: str) -> None:
    prefix, sep, name = key.rpartition("/")
    if sep:
        try:
            dns1123_subdomain(prefix, path)
        except ApiError:
            raise fail(path, f"label key {key!r}: the prefix must be a DNS-1123 subdomain") from None
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        raise fail(
            path,
            f"label key {key!r}: the name must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )


def label_value(value: str, path: str) -> None:
    if value and (len(value) > 63 or not LABEL_NAME.match(value)):
        raise fail(
            path,
            f"label value {value!r} must be empty or at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )


def labels(values: Mapping[str, str], path: str) -> None:
    for key, value in values.items():
        label_key(key, f"{path}[{key}]")
        label_value(value, f"{path}[{key}]")


def port_number(value: int, path: str) -> None:
    if not 1 <= value <= 65535:
        raise fail(path, f"must be between 1 and 65535, got {value}")


def port_name(value: str, path: str) -> None:
    """IANA_SVC_NAME: what a container port name (and named targetPort) is."""
    if len(value) > 15 or not IANA_SVC_NAME.match(value) or "--" in value or not any(c.isalpha() for c in value):
        raise fail(
            path,
            f"{value!r} must be an IANA service name: at most 15 lowercase letters, digits and '-', "
            "with at least one letter and no '--'",
        )


def ipv4_address(value: str, path: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise fail(path, f"{value!r} is not an IPv4 address") from None


def protocol(value: int, path: str) -> None:
    if value not in transport.KNOWN:
        raise fail(path, "must be TCP or UDP")


def metadata(meta: meta_pb2.ObjectMeta, path: str = "metadata", service: bool = False) -> None:
    if service:
        dns1035_label(meta.name, f"{path}.name")
    else:
        dns1123_subdomain(meta.name, f"{path}.name")
    dns1123_label(meta.namespace or "default", f"{path}.namespace")
    labels(meta.labels, f"{path}.labels")
    for key in meta.annotations:
        label_key(key, f"{path}.annotations[{key}]")


def pod_spec(spec: objects_pb2.PodSpec, path: str = "spec") -> None:
    if spec.node_name:
        dns1123_subdomain(spec.node_name, f"{path}.nodeName")
    if spec.hostname:
        dns1123_label(spec.hostname, f"{path}.hostname")
    if spec.subdomain:
        dns1123_label(spec.subdomain, f"{path}.subdomain")
    if not spec.containers:
        raise fail(f"{path}.containers", "at least one container is required")
    names: set[str] = set()
    port_names: set[str] = set()
    for i, c in enumerate(spec.containers):
        cpath = f"{path}.containers[{i}]"
        dns1123_label(c.name, f"{cpath}.name")
        if c.name in names:
            raise fail(f"{cpath}.name", f"duplicate container name {c.name!r}")
        names.add(c.name)
        if not c.image:
            raise fail(f"{cpath}.image", "required")
        seen_ports: set[tuple[int, int]] = set()
        for j, p in enumerate(c.ports):
            ppath = f"{cpath}.ports[{j}]"
            port_number(p.container_port, f"{ppath}.containerPort")
            protocol(transport.effective(p.protocol), f"{ppath}.protocol")
            if p.name:
                port_name(p.name, f"{ppath}.name")
                if p.name in port_names:
                    raise fail(f"{ppath}.name", f"duplicate port name {p.name!r}")
                port_names.add(p.name)
            pair = (p.container_port, transport.effective(p.protocol))
            if pair in seen_ports:
                raise fail(f"{ppath}.containerPort", f"duplicate port {p.container_port}")
            seen_ports.add(pair)


def pod(obj: objects_pb2.Pod) -> None:
    metadata(obj.metadata)
    pod_spec(obj.spec)


def deployment(obj: objects_pb2.Deployment) -> None:
    metadata(obj.metadata)
    if obj.spec.replicas < 0:
        raise fail("spec.replicas", f"must not be negative, got {obj.spec.replicas}")
    if not obj.spec.selector:
        raise fail("spec.selector", "required: the labels that select this deployment's pods")
    labels(obj.spec.selector, "spec.selector")
    labels(obj.spec.template.metadata.labels, "spec.template.metadata.labels")
    for key, value in obj.spec.selector.items():
        if obj.spec.template.metadata.labels.get(key) != value:
            raise fail("spec.template.metadata.labels", f"must include the selector's {key}={value}")
    pod_spec(obj.spec.template.spec, "spec.template.spec")


def service(obj: objects_pb2.Service) -> None:
    metadata(obj.metadata, service=True)
    spec = obj.spec
    kind = spec.type or objects_pb2.SERVICE_TYPE_CLUSTER_IP
    if kind not in objects_pb2.ServiceType.values() or kind == objects_pb2.SERVICE_TYPE_UNSPECIFIED:
        raise fail("spec.type", "must be ClusterIP, NodePort, LoadBalancer or ExternalName")
    labels(spec.selector, "spec.selector")
    headless = spec.cluster_ip == "None"
    if spec.cluster_ip and not headless:
        try:
            ip = ipaddress.ip_address(spec.cluster_ip)
        except ValueError:
            raise fail("spec.clusterIP", f"{spec.cluster_ip!r} must be empty, None or an IPv4 address") from None
        if ip.version != 4:
            raise fail("spec.clusterIP", "IPv6 service addresses are not supported")
    if kind == objects_pb2.SERVICE_TYPE_EXTERNAL_NAME:
        dns1123_subdomain(spec.external_name.rstrip("."), "spec.externalName")
        if spec.cluster_ip and not headless:
            raise fail("spec.clusterIP", "must be empty for type ExternalName")
    elif spec.external_name:
        raise fail("spec.externalName", "only allowed for type ExternalName")
    if headless and kind in (objects_pb2.SERVICE_TYPE_NODE_PORT, objects_pb2.SERVICE_TYPE_LOAD_BALANCER):
        raise fail("spec.clusterIP", "None (headless) is not allowed for NodePort or LoadBalancer services")
    if kind == objects_pb2.SERVICE_TYPE_LOAD_BALANCER:
        if not spec.load_balancer_ip:
            raise fail("spec.loadBalancerIP", "required for type LoadBalancer: a floating IP of yours (pi create fip)")
        try:
            ipaddress.IPv4Address(spec.load_balancer_ip)
        except ValueError:
            raise fail("spec.loadBalancerIP", f"{spec.load_balancer_ip!r} is not an IPv4 address") from None
    elif spec.load_balancer_ip:
        raise fail("spec.loadBalancerIP", "only allowed for type LoadBalancer")
    if spec.session_affinity not in (
        objects_pb2.SESSION_AFFINITY_UNSPECIFIED,
        objects_pb2.SESSION_AFFINITY_NONE,
        objects_pb2.SESSION_AFFINITY_CLIENT_IP,
    ):
        raise fail("spec.sessionAffinity", "must be None or ClientIP")
    if spec.session_affinity_timeout_seconds and not 1 <= spec.session_affinity_timeout_seconds <= MAX_AFFINITY_TIMEOUT:
        raise fail(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"must be between 1 and {MAX_AFFINITY_TIMEOUT}, got {spec.session_affinity_timeout_seconds}",
        )
    service_ports(spec, kind, headless)


def service_ports(spec: objects_pb2.ServiceSpec, kind: int, headless: bool) -> None:
    if not spec.ports and kind != objects_pb2.SERVICE_TYPE_EXTERNAL_NAME and not headless:
        raise fail("spec.ports", "at least one port is required")
    names: set[str] = set()
    pairs: set[tuple[int, int]] = set()
    node_ports: set[tuple[int, int]] = set()
    for i, p in enumerate(spec.ports):
        path = f"spec.ports[{i}]"
        if len(spec.ports) > 1 and not p.name:
            raise fail(f"{path}.name", "required when a service has more than one port")
        if p.name:
            dns1123_label(p.name, f"{path}.name")
            if p.name in names:
                raise fail(f"{path}.name", f"duplicate port name {p.name!r}")
            names.add(p.name)
        proto = transport.effective(p.protocol)
        protocol(proto, f"{path}.protocol")
        port_number(p.port, f"{path}.port")
        if (proto, p.port) in pairs:
            raise fail(f"{path}.port", f"duplicate {meta_pb2.Protocol.Name(proto)[9:]} port {p.port}")
        pairs.add((proto, p.port))
        if p.target_port and p.target_port_name:
            raise fail(f"{path}.targetPort", "give a number or a name, not both")
        if p.target_port:
            port_number(p.target_port, f"{path}.targetPort")
        if p.target_port_name:
            port_name(p.target_port_name, f"{path}.targetPort")
        if p.node_port:
            if kind not in (objects_pb2.SERVICE_TYPE_NODE_PORT, objects_pb2.SERVICE_TYPE_LOAD_BALANCER):
                raise fail(f"{path}.nodePort", "only allowed for NodePort and LoadBalancer services")
            if not NODE_PORT_MIN <= p.node_port <= NODE_PORT_MAX:
                raise fail(
                    f"{path}.nodePort", f"must be between {NODE_PORT_MIN} and {NODE_PORT_MAX}, got {p.node_port}"
                )
            if (proto, p.node_port) in node_ports:
                raise fail(f"{path}.nodePort", f"duplicate node port {p.node_port}")
            node_ports.add((proto, p.node_port))


def namespace_of(meta: meta_pb2.ObjectMeta) -> str:
    return meta.namespace or "default"
