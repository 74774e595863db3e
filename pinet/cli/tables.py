"""kubectl-style tables and descriptions (pure logic)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from pinet.api.network.v1 import objects_pb2
from pinet.cli.manifests import POD_PHASES, SERVICE_TYPES, timestamp
from pinet.objects import protocol

NONE = "<none>"


def age(ts: Timestamp, now: float | None = None) -> str:
    if not ts.seconds:
        return "<unknown>"
    seconds = int((now if now is not None else time.time()) - ts.seconds)
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def labels(values: Mapping[str, str]) -> str:
    items = dict(values)
    return ",".join(f"{k}={v}" for k, v in sorted(items.items())) or NONE


def pod_rows(pods: Sequence[objects_pb2.Pod], wide: bool) -> str:
    header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
    rows = []
    for p in pods:
        row = [
            p.metadata.name,
            "1/1" if p.status.ready else "0/1",
            POD_PHASES.get(p.status.phase, "Pending"),
            "0",
            age(p.metadata.creation_timestamp),
        ]
        if wide:
            row += [p.status.pod_ip or NONE, p.spec.node_name or NONE]
        rows.append(row)
    return table(header, rows)


def service_ports(svc: objects_pb2.Service) -> str:
    parts = []
    for p in svc.spec.ports:
        port = f"{p.port}:{p.node_port}" if p.node_port else str(p.port)
        parts.append(f"{port}/{protocol.manifest_name(p.protocol)}")
    return ",".join(parts) or NONE


def service_rows(services: Sequence[objects_pb2.Service], wide: bool) -> str:
    header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"] + (["SELECTOR"] if wide else [])
    rows = []
    for s in services:
        external = s.status.load_balancer_ingress_ip or (
            s.spec.external_name if s.spec.type == objects_pb2.SERVICE_TYPE_EXTERNAL_NAME else NONE
        )
        if s.spec.type == objects_pb2.SERVICE_TYPE_LOAD_BALANCER and not external:
            external = "<pending>"
        row = [
            s.metadata.name,
            SERVICE_TYPES.get(s.spec.type, "ClusterIP"),
            s.spec.cluster_ip or NONE,
            external,
            service_ports(s),
            age(s.metadata.creation_timestamp),
        ]
        if wide:
            row.append(labels(s.spec.selector))
        rows.append(row)
    return table(header, rows)


def endpoint_list(ep: objects_pb2.Endpoints, limit: int = 3) -> str:
    addresses = [f"{e.ip}:{p.port}" for e in ep.endpoints if e.ready for p in e.ports] or [
        e.ip for e in ep.endpoints if e.ready and not e.ports
    ]
    if not addresses:
        return NONE
    if len(addresses) > limit:
        return ",".join(addresses[:limit]) + f" + {len(addresses) - limit} more..."
    return ",".join(addresses)


def endpoints_rows(items: Sequence[objects_pb2.Endpoints], wide: bool) -> str:
    return table(
        ["NAME", "ENDPOINTS", "AGE"],
        [[e.metadata.name, endpoint_list(e, 1000 if wide else 3), age(e.metadata.creation_timestamp)] for e in items],
    )


def fip_rows(items: Sequence[objects_pb2.FloatingIP], wide: bool) -> str:
    header = ["ADDRESS", "SERVICES", "ALLOCATED", "AGE"] + (["DESCRIPTION"] if wide else [])
    rows = []
    for f in items:
        row = [f.address, ",".join(f.bound_services) or NONE, timestamp(f.allocated_at), age(f.allocated_at)]
        if wide:
            row.append(f.description or NONE)
        rows.append(row)
    return table(header, rows)


def node_rows(items: Sequence[objects_pb2.Node], wide: bool) -> str:
    header = ["NAME", "STATUS", "AGE"] + (["UNDERLAY-IP", "AGENT"] if wide else [])
    rows = []
    for n in items:
        row = [n.name, "Ready" if n.ready else "NotReady", age(n.creation_timestamp)]
        if wide:
            row += [n.underlay_ip or NONE, n.agent_address or NONE]
        rows.append(row)
    return table(header, rows)


def deployment_rows(items: Sequence[objects_pb2.Deployment], wide: bool) -> str:
    header = ["NAME", "READY", "AVAILABLE", "AGE"] + (["SELECTOR"] if wide else [])
    rows = []
    for d in items:
        row = [
            d.metadata.name,
            f"{d.status.ready_replicas}/{d.spec.replicas}",
            str(d.status.ready_replicas),
            age(d.metadata.creation_timestamp),
        ]
        if wide:
            row.append(labels(d.spec.selector))
        rows.append(row)
    return table(header, rows)


def describe_service(svc: objects_pb2.Service, ep: objects_pb2.Endpoints | None) -> str:
    s = svc.spec
    lines: list[tuple[str, str]] = [
        ("Name:", svc.metadata.name),
        ("Namespace:", svc.metadata.namespace or "default"),
        ("Labels:", labels(svc.metadata.labels)),
        ("Annotations:", labels(svc.metadata.annotations)),
        ("Selector:", labels(s.selector)),
        ("Type:", SERVICE_TYPES.get(s.type, "ClusterIP")),
        ("IP:", s.cluster_ip or NONE),
    ]
    if s.type == objects_pb2.SERVICE_TYPE_EXTERNAL_NAME:
        lines.append(("External Name:", s.external_name))
    if svc.status.load_balancer_ingress_ip:
        lines.append(("LoadBalancer Ingress:", svc.status.load_balancer_ingress_ip))
    for p in s.ports:
        name = p.name or "<unset>"
        lines.append(("Port:", f"{name}  {p.port}/{protocol.manifest_name(p.protocol)}"))
        lines.append(("TargetPort:", f"{p.target_port_name or p.target_port}/{protocol.manifest_name(p.protocol)}"))
        if p.node_port:
            lines.append(("NodePort:", f"{name}  {p.node_port}/{protocol.manifest_name(p.protocol)}"))
        if ep is not None:
            addresses = [f"{e.ip}:{ep_port.port}" for e in ep.endpoints if e.ready for ep_port in e.ports
                         if ep_port.name == p.name]  # fmt: skip
            lines.append(("Endpoints:", ",".join(addresses) or NONE))
    affinity = "ClientIP" if s.session_affinity == objects_pb2.SESSION_AFFINITY_CLIENT_IP else "None"
    lines.append(("Session Affinity:", affinity))
    if s.session_affinity == objects_pb2.SESSION_AFFINITY_CLIENT_IP:
        lines.append(("Affinity Timeout:", f"{s.session_affinity_timeout_seconds}s"))
    lines.append(("Events:", NONE))
    width = max(len(k) for k, _ in lines) + 1
    return "\n".join(f"{k.ljust(width)} {v}" for k, v in lines)


def describe_pod(pod: objects_pb2.Pod) -> str:
    lines = [
        ("Name:", pod.metadata.name),
        ("Namespace:", pod.metadata.namespace or "default"),
        ("Node:", f"{pod.spec.node_name}/{pod.status.host_ip}" if pod.status.host_ip else pod.spec.node_name or NONE),
        ("Start Time:", timestamp(pod.metadata.creation_timestamp)),
        ("Labels:", labels(pod.metadata.labels)),
        ("Status:", POD_PHASES.get(pod.status.phase, "Pending")),
        ("IP:", pod.status.pod_ip or NONE),
        ("Ready:", "True" if pod.status.ready else "False"),
        ("Message:", pod.status.message or NONE),
        ("Containers:", ", ".join(f"{c.name} ({c.image})" for c in pod.spec.containers)),
    ]
    width = max(len(k) for k, _ in lines) + 1
    return "\n".join(f"{k.ljust(width)} {v}" for k, v in lines)


def policy_rows(items: Sequence[Any], wide: bool) -> str:
    def selector(p: Any) -> str:
        s = p.spec.pod_selector
        parts = [f"{k}={v}" for k, v in sorted(s.match_labels.items())] + [e.key for e in s.match_expressions]
        return ",".join(parts) or "<all pods>"

    types = {1: "Ingress", 2: "Egress"}
    rows = [
        [
            p.metadata.name,
            selector(p),
            ",".join(types.get(t, "?") for t in p.spec.policy_types),
            age(p.metadata.creation_timestamp),
        ]
        for p in items
    ]
    return table(["NAME", "POD-SELECTOR", "POLICY-TYPES", "AGE"], rows)


def namespace_rows(items: Sequence[Any], wide: bool) -> str:
    rows = [[n.metadata.name, labels(n.metadata.labels), age(n.metadata.creation_timestamp)] for n in items]
    return table(["NAME", "LABELS", "AGE"], rows)


def describe_policy(policy: Any, selected: Sequence[Any], ingress: list[str], egress: list[str]) -> str:
    types = {1: "Ingress", 2: "Egress"}
    lines: list[tuple[str, str]] = [
        ("Name:", policy.metadata.name),
        ("Namespace:", policy.metadata.namespace or "default"),
        ("Labels:", labels(policy.metadata.labels)),
        ("Policy Types:", ", ".join(types.get(t, "?") for t in policy.spec.policy_types)),
        ("Selected Pods:", ", ".join(f"{p.metadata.name} ({p.status.pod_ip or 'no IP'})" for p in selected) or NONE),
    ]
    if 1 in policy.spec.policy_types:
        lines += [("Allowing ingress:", rule) for rule in ingress] or [("Allowing ingress:", "nothing (isolated)")]
    if 2 in policy.spec.policy_types:
        lines += [("Allowing egress:", rule) for rule in egress] or [("Allowing egress:", "nothing (isolated)")]
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in lines)
