"""Kubernetes-shaped YAML manifests <-> pinet API objects (pure logic).

Reads apiVersion v1 Pod and Service and apps/v1 Deployment documents, and
writes objects back in the same shape for `-o yaml|json`. Shape errors name
the document and the field; the server checks values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import objects_pb2, policy_pb2
from pinet.cli import policy_manifests
from pinet.objects import protocol

KINDS = {
    "Pod": "v1", "Service": "v1", "Deployment": "apps/v1", "Namespace": "v1",
    "NetworkPolicy": policy_manifests.POLICY_API,
}  # fmt: skip


class ManifestError(ValueError):
    pass


@dataclass
class Document:
    kind: str
    obj: Message
    where: str


def load_all(text: str, source: str) -> list[Document]:
    try:
        raw = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    docs: list[Document] = []
    for i, doc in enumerate(raw):
        where = f"{source}" if len(raw) == 1 else f"{source} (document {i + 1})"
        for item in _items(doc, where):
            docs.append(parse(item, where))
    if not docs:
        raise ManifestError(f"{source}: no objects found")
    return docs


def _items(doc: Any, where: str) -> Iterator[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: a manifest must be a mapping with apiVersion, kind and metadata")
    if doc.get("kind") == "List":
        for item in _list(doc.get("items", []), f"{where}: items"):
            yield _map(item, f"{where}: items[]")
    else:
        yield doc


def parse(doc: dict[str, Any], where: str) -> Document:
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ManifestError(
            f"{where}: kind: {kind!r} is not supported (Pod, Service, Deployment, Namespace, NetworkPolicy)"
        )
    api = doc.get("apiVersion")
    if api != KINDS[kind]:
        raise ManifestError(f"{where}: apiVersion: {kind} needs {KINDS[kind]!r}, got {api!r}")
    p = _Parser(where)
    if kind == "Pod":
        obj: Message = objects_pb2.Pod(metadata=p.meta(doc.get("metadata")), spec=p.pod_spec(doc.get("spec"), "spec"))
    elif kind == "Service":
        obj = objects_pb2.Service(metadata=p.meta(doc.get("metadata")), spec=p.service_spec(doc.get("spec")))
    elif kind == "Namespace":
        meta = p.meta(doc.get("metadata"))
        meta.ClearField("namespace")
        obj = policy_pb2.Namespace(metadata=meta)
    elif kind == "NetworkPolicy":
        try:
            obj = policy_manifests.parse_network_policy(doc, p.meta(doc.get("metadata")), where)
        except policy_manifests.PolicyManifestError as exc:
            raise ManifestError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from None
    else:
        obj = objects_pb2.Deployment(metadata=p.meta(doc.get("metadata")), spec=p.deployment_spec(doc.get("spec")))
    return Document(kind, obj, where)


def _map(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: must be a mapping")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"{path}: must be a list")
    return value


class _Parser:
    def __init__(self, where: str) -> None:
        self.where = where

    def err(self, path: str, message: str) -> ManifestError:
        return ManifestError(f"{self.where}: {path}: {message}")

    def str_(self, value: Any, path: str) -> str:
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.err(path, "must be a string")
        return str(value)

    def int_(self, value: Any, path: str) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(path, f"must be an integer, got {value!r}")
        if not -(2**31) <= value < 2**31:
            raise self.err(path, f"{value} is out of range")
        return value

    def bool_(self, value: Any, path: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.err(path, "must be true or false")
        return value

    def strmap(self, value: Any, path: str) -> dict[str, str]:
        out = {}
        for k, v in _map(value, f"{self.where}: {path}").items():
            if not isinstance(k, str):
                raise self.err(path, f"key {k!r} must be a string")
            if isinstance(v, bool) or v is None or not isinstance(v, str | int | float):
                raise self.err(f"{path}.{k}", 'must be a string (quote values like "true" or "1")')
            out[k] = str(v)
        return out

    def protocol(self, value: Any, path: str) -> int:
        text = self.str_(value, path) or "TCP"
        chosen = protocol.from_manifest(text)
        if chosen is None:
            raise self.err(path, f"{text!r} is not supported: TCP or UDP")
        return chosen

    def meta(self, value: Any) -> meta_pb2.ObjectMeta:
        m = _map(value, f"{self.where}: metadata")
        return meta_pb2.ObjectMeta(
            name=self.str_(m.get("name"), "metadata.name"),
            namespace=self.str_(m.get("namespace"), "metadata.namespace"),
            labels=self.strmap(m.get("labels"), "metadata.labels"),
            annotations=self.strmap(m.get("annotations"), "metadata.annotations"),
            resource_version=int(m.get("resourceVersion") or 0)
            if str(m.get("resourceVersion") or "0").isdigit()
            else 0,
        )

    def pod_spec(self, value: Any, path: str) -> objects_pb2.PodSpec:
        s = _map(value, f"{self.where}: {path}")
        spec = objects_pb2.PodSpec(
            node_name=self.str_(s.get("nodeName"), f"{path}.nodeName"),
            hostname=self.str_(s.get("hostname"), f"{path}.hostname"),
            subdomain=self.str_(s.get("subdomain"), f"{path}.subdomain"),
        )
        for i, raw_container in enumerate(_list(s.get("containers"), f"{self.where}: {path}.containers")):
            cp = f"{path}.containers[{i}]"
            c = _map(raw_container, f"{self.where}: {cp}")
            container = spec.containers.add(
                name=self.str_(c.get("name"), f"{cp}.name"), image=self.str_(c.get("image"), f"{cp}.image")
            )
            command = [*_list(c.get("command"), f"{cp}.command"), *_list(c.get("args"), f"{cp}.args")]
            container.command.extend(self.str_(x, f"{cp}.command") for x in command)
            for j, raw_port in enumerate(_list(c.get("ports"), f"{self.where}: {cp}.ports")):
                pp = f"{cp}.ports[{j}]"
                port = _map(raw_port, f"{self.where}: {pp}")
                container.ports.add(
                    name=self.str_(port.get("name"), f"{pp}.name"),
                    container_port=self.int_(port.get("containerPort"), f"{pp}.containerPort"),
                    protocol=self.protocol(port.get("protocol"), f"{pp}.protocol"),
                )
        return spec

    def service_spec(self, value: Any) -> objects_pb2.ServiceSpec:
        s = _map(value, f"{self.where}: spec")
        types = {
            "ClusterIP": objects_pb2.SERVICE_TYPE_CLUSTER_IP,
            "NodePort": objects_pb2.SERVICE_TYPE_NODE_PORT,
            "LoadBalancer": objects_pb2.SERVICE_TYPE_LOAD_BALANCER,
            "ExternalName": objects_pb2.SERVICE_TYPE_EXTERNAL_NAME,
        }
        type_name = self.str_(s.get("type"), "spec.type") or "ClusterIP"
        if type_name not in types:
            raise self.err("spec.type", f"{type_name!r} must be one of {', '.join(types)}")
        affinity_name = self.str_(s.get("sessionAffinity"), "spec.sessionAffinity") or "None"
        affinities = {"None": objects_pb2.SESSION_AFFINITY_NONE, "ClientIP": objects_pb2.SESSION_AFFINITY_CLIENT_IP}
        if affinity_name not in affinities:
            raise self.err("spec.sessionAffinity", f"{affinity_name!r} must be None or ClientIP")
        config = _map(_map(s.get("sessionAffinityConfig"), "spec.sessionAffinityConfig").get("clientIP"), "clientIP")
        spec = objects_pb2.ServiceSpec(
            type=types[type_name],
            cluster_ip=self.str_(s.get("clusterIP"), "spec.clusterIP"),
            selector=self.strmap(s.get("selector"), "spec.selector"),
            session_affinity=affinities[affinity_name],
            session_affinity_timeout_seconds=self.int_(
                config.get("timeoutSeconds"), "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
            ),
            load_balancer_ip=self.str_(s.get("loadBalancerIP"), "spec.loadBalancerIP"),
            external_name=self.str_(s.get("externalName"), "spec.externalName"),
            publish_not_ready_addresses=self.bool_(s.get("publishNotReadyAddresses"), "spec.publishNotReadyAddresses"),
        )
        for i, raw_port in enumerate(_list(s.get("ports"), f"{self.where}: spec.ports")):
            pp = f"spec.ports[{i}]"
            port = _map(raw_port, f"{self.where}: {pp}")
            target = port.get("targetPort")
            target_num, target_name = 0, ""
            if isinstance(target, str) and not target.isdigit():
                target_name = target
            elif target is not None:
                target_num = self.int_(int(target) if isinstance(target, str) else target, f"{pp}.targetPort")
            spec.ports.add(
                name=self.str_(port.get("name"), f"{pp}.name"),
                protocol=self.protocol(port.get("protocol"), f"{pp}.protocol"),
                port=self.int_(port.get("port"), f"{pp}.port"),
                target_port=target_num,
                target_port_name=target_name,
                node_port=self.int_(port.get("nodePort"), f"{pp}.nodePort"),
            )
        return spec

    def deployment_spec(self, value: Any) -> objects_pb2.DeploymentSpec:
        s = _map(value, f"{self.where}: spec")
        selector = _map(s.get("selector"), f"{self.where}: spec.selector")
        if set(selector) - {"matchLabels"}:
            raise self.err("spec.selector", "only matchLabels is supported")
        template = _map(s.get("template"), f"{self.where}: spec.template")
        replicas = s.get("replicas", 1)
        return objects_pb2.DeploymentSpec(
            replicas=self.int_(replicas, "spec.replicas"),
            selector=self.strmap(selector.get("matchLabels"), "spec.selector.matchLabels"),
            template=objects_pb2.PodTemplate(
                metadata=self.meta(template.get("metadata")),
                spec=self.pod_spec(template.get("spec"), "spec.template.spec"),
            ),
        )


# ------------------------------------------------------------- rendering


def timestamp(ts: Timestamp) -> str:
    if not ts.seconds:
        return ""
    return dt.datetime.fromtimestamp(ts.seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(m: meta_pb2.ObjectMeta) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m.name, "namespace": m.namespace or "default"}
    if m.labels:
        out["labels"] = dict(m.labels)
    if m.annotations:
        out["annotations"] = dict(m.annotations)
    if m.uid:
        out["uid"] = m.uid
    if m.resource_version:
        out["resourceVersion"] = str(m.resource_version)
    if m.creation_timestamp.seconds:
        out["creationTimestamp"] = timestamp(m.creation_timestamp)
    return out


def _pod_spec(s: objects_pb2.PodSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.node_name:
        out["nodeName"] = s.node_name
    for key, value in (("hostname", s.hostname), ("subdomain", s.subdomain)):
        if value:
            out[key] = value
    containers = []
    for c in s.containers:
        cd: dict[str, Any] = {"name": c.name, "image": c.image}
        if c.command:
            cd["command"] = list(c.command)
        if c.ports:
            cd["ports"] = [
                {
                    **({"name": p.name} if p.name else {}),
                    "containerPort": p.container_port,
                    "protocol": protocol.manifest_name(p.protocol),
                }
                for p in c.ports
            ]
        containers.append(cd)
    out["containers"] = containers
    return out


POD_PHASES = {
    objects_pb2.POD_PHASE_PENDING: "Pending",
    objects_pb2.POD_PHASE_RUNNING: "Running",
    objects_pb2.POD_PHASE_UNKNOWN: "Unknown",
    objects_pb2.POD_PHASE_TERMINATING: "Terminating",
}
SERVICE_TYPES = {
    objects_pb2.SERVICE_TYPE_CLUSTER_IP: "ClusterIP",
    objects_pb2.SERVICE_TYPE_NODE_PORT: "NodePort",
    objects_pb2.SERVICE_TYPE_LOAD_BALANCER: "LoadBalancer",
    objects_pb2.SERVICE_TYPE_EXTERNAL_NAME: "ExternalName",
}


def render(obj: Message) -> dict[str, Any]:
    """An API object as a Kubernetes-shaped mapping."""
    if isinstance(obj, policy_pb2.NetworkPolicy):
        return policy_manifests.render_network_policy(obj, _meta(obj.metadata))
    if isinstance(obj, policy_pb2.Namespace):
        meta = _meta(obj.metadata)
        meta.pop("namespace", None)
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
    if isinstance(obj, objects_pb2.Pod):
        return {
            "apiVersion": "v1", "kind": "Pod", "metadata": _meta(obj.metadata), "spec": _pod_spec(obj.spec),
            "status": {
                "phase": POD_PHASES.get(obj.status.phase, "Pending"), "podIP": obj.status.pod_ip,
                "hostIP": obj.status.host_ip, "ready": obj.status.ready,
            },
        }  # fmt: skip
    if isinstance(obj, objects_pb2.Service):
        s = obj.spec
        spec: dict[str, Any] = {"type": SERVICE_TYPES.get(s.type, "ClusterIP")}
        if s.cluster_ip:
            spec["clusterIP"] = s.cluster_ip
        if s.selector:
            spec["selector"] = dict(s.selector)
        ports = []
        for p in s.ports:
            pd: dict[str, Any] = {"protocol": protocol.manifest_name(p.protocol), "port": p.port}
            if p.name:
                pd["name"] = p.name
            pd["targetPort"] = p.target_port_name or p.target_port or p.port
            if p.node_port:
                pd["nodePort"] = p.node_port
            ports.append(pd)
        if ports:
            spec["ports"] = ports
        spec["sessionAffinity"] = "ClientIP" if s.session_affinity == objects_pb2.SESSION_AFFINITY_CLIENT_IP else "None"
        if s.session_affinity == objects_pb2.SESSION_AFFINITY_CLIENT_IP:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": s.session_affinity_timeout_seconds}}
        if s.load_balancer_ip:
            spec["loadBalancerIP"] = s.load_balancer_ip
        if s.external_name:
            spec["externalName"] = s.external_name
        out: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(obj.metadata), "spec": spec}
        if obj.status.load_balancer_ingress_ip:
            out["status"] = {"loadBalancer": {"ingress": [{"ip": obj.status.load_balancer_ingress_ip}]}}
        return out
    if isinstance(obj, objects_pb2.Deployment):
        return {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(obj.metadata),
            "spec": {
                "replicas": obj.spec.replicas, "selector": {"matchLabels": dict(obj.spec.selector)},
                "template": {"metadata": {"labels": dict(obj.spec.template.metadata.labels)},
                             "spec": _pod_spec(obj.spec.template.spec)},
            },
            "status": {"replicas": obj.status.replicas, "readyReplicas": obj.status.ready_replicas},
        }  # fmt: skip
    if isinstance(obj, objects_pb2.Endpoints):
        return {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": _meta(obj.metadata),
            "endpoints": [
                {"ip": e.ip, "nodeName": e.node_name, "targetRef": {"kind": "Pod", "name": e.pod_name},
                 "ready": e.ready,
                 "ports": [{"name": p.name, "port": p.port, "protocol": protocol.manifest_name(p.protocol)}
                           for p in e.ports]}
                for e in obj.endpoints
            ],
        }  # fmt: skip
    if isinstance(obj, objects_pb2.FloatingIP):
        return {
            "kind": "FloatingIP", "address": obj.address, "tenant": obj.tenant,
            "allocatedAt": timestamp(obj.allocated_at), "boundServices": list(obj.bound_services),
            "description": obj.description,
        }  # fmt: skip
    if isinstance(obj, objects_pb2.Node):
        return {
            "kind": "Node", "metadata": {"name": obj.name, "labels": dict(obj.labels),
                                         "creationTimestamp": timestamp(obj.creation_timestamp)},
            "status": {"ready": obj.ready, "underlayIP": obj.underlay_ip, "agentAddress": obj.agent_address,
                       "lastHeartbeat": timestamp(obj.last_heartbeat), "reason": obj.reason},
        }  # fmt: skip
    raise TypeError(type(obj).__name__)
