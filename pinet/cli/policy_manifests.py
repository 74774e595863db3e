"""networking.k8s.io/v1 NetworkPolicy and v1 Namespace manifests <->
pinet.network.v1 messages. The shapes differ from the protos only where a
Kubernetes field is a keyword or an int-or-string (from/to are `peers`, a
port is a number or a name), so the conversion renames those fields and
leaves the rest to protobuf's JSON mapping; the server validates."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from pinet.api.network.v1 import policy_pb2

POLICY_API = "networking.k8s.io/v1"
_TYPES = {"Ingress": "POLICY_TYPE_INGRESS", "Egress": "POLICY_TYPE_EGRESS"}
_OPERATORS = {
    "In": "SELECTOR_OPERATOR_IN", "NotIn": "SELECTOR_OPERATOR_NOT_IN",
    "Exists": "SELECTOR_OPERATOR_EXISTS", "DoesNotExist": "SELECTOR_OPERATOR_DOES_NOT_EXIST",
}  # fmt: skip
_PROTOCOLS = {"TCP": "PROTOCOL_TCP", "UDP": "PROTOCOL_UDP"}


class PolicyManifestError(ValueError):
    pass


def _selector(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyManifestError(f"{path}: must be a label selector (matchLabels, matchExpressions)")
    out = dict(value)
    exprs = []
    for i, expr in enumerate(value.get("matchExpressions") or []):
        if not isinstance(expr, dict):
            raise PolicyManifestError(f"{path}.matchExpressions[{i}]: must be a mapping with key and operator")
        op = expr.get("operator")
        if op not in _OPERATORS:
            raise PolicyManifestError(
                f"{path}.matchExpressions[{i}].operator: {op!r} is not In, NotIn, Exists or DoesNotExist"
            )
        exprs.append({**expr, "operator": _OPERATORS[op]})
    if exprs:
        out["matchExpressions"] = exprs
    return out


def _port(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyManifestError(f"{path}: must be a mapping (protocol, port, endPort)")
    out: dict[str, Any] = {}
    if "protocol" in value:
        if value["protocol"] not in _PROTOCOLS:
            raise PolicyManifestError(f"{path}.protocol: {value['protocol']!r} is not TCP or UDP")
        out["protocol"] = _PROTOCOLS[value["protocol"]]
    port = value.get("port")
    if isinstance(port, bool) or not isinstance(port, int | str | None):
        raise PolicyManifestError(f"{path}.port: must be a number or a port name")
    if isinstance(port, int):
        out["port"] = port
    elif isinstance(port, str):
        if port.isdigit():
            out["port"] = int(port)
        else:
            out["portName"] = port
    if "endPort" in value:
        out["endPort"] = value["endPort"]
    return out


def _rules(value: Any, path: str, peers: str) -> list[dict[str, Any]]:
    out = []
    for i, rule in enumerate(value or []):
        where = f"{path}[{i}]"
        if not isinstance(rule, dict):
            raise PolicyManifestError(f"{where}: must be a mapping ({peers}, ports)")
        converted: dict[str, Any] = {}
        items = []
        for j, peer in enumerate(rule.get(peers) or []):
            if not isinstance(peer, dict):
                raise PolicyManifestError(f"{where}.{peers}[{j}]: must be a mapping")
            item = dict(peer)
            for field in ("podSelector", "namespaceSelector"):
                if field in peer:
                    item[field] = _selector(peer[field], f"{where}.{peers}[{j}].{field}")
            items.append(item)
        if items:
            converted["peers"] = items
        if rule.get("ports"):
            converted["ports"] = [_port(p, f"{where}.ports[{j}]") for j, p in enumerate(rule["ports"])]
        out.append(converted)
    return out


def parse_network_policy(doc: dict[str, Any], meta: Any, where: str) -> policy_pb2.NetworkPolicy:
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise PolicyManifestError(f"{where}: spec: must be a mapping")
    body: dict[str, Any] = {"podSelector": _selector(spec.get("podSelector"), "spec.podSelector")}
    types = spec.get("policyTypes") or []
    for i, t in enumerate(types):
        if t not in _TYPES:
            raise PolicyManifestError(f"{where}: spec.policyTypes[{i}]: {t!r} is not Ingress or Egress")
    body["policyTypes"] = [_TYPES[t] for t in types]
    body["ingress"] = _rules(spec.get("ingress"), "spec.ingress", "from")
    body["egress"] = _rules(spec.get("egress"), "spec.egress", "to")
    policy = policy_pb2.NetworkPolicy(metadata=meta)
    try:
        json_format.ParseDict(body, policy.spec)
    except json_format.ParseError as exc:
        raise PolicyManifestError(f"{where}: spec: {exc}") from None
    return policy


def _render_selector(s: policy_pb2.LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.match_labels:
        out["matchLabels"] = dict(s.match_labels)
    if s.match_expressions:
        names = {v: k for k, v in _OPERATORS.items()}
        out["matchExpressions"] = [
            {"key": e.key, "operator": names.get(policy_pb2.SelectorOperator.Name(e.operator), "In"),
             **({"values": list(e.values)} if e.values else {})}
            for e in s.match_expressions
        ]  # fmt: skip
    return out


def _render_rules(rules: Any, peers: str) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        item: dict[str, Any] = {}
        if rule.peers:
            rendered = []
            for p in rule.peers:
                peer: dict[str, Any] = {}
                if p.HasField("pod_selector"):
                    peer["podSelector"] = _render_selector(p.pod_selector)
                if p.HasField("namespace_selector"):
                    peer["namespaceSelector"] = _render_selector(p.namespace_selector)
                if p.HasField("ip_block"):
                    peer["ipBlock"] = {"cidr": p.ip_block.cidr, **({"except": list(p.ip_block.except_cidrs)}
                                                                   if p.ip_block.except_cidrs else {})}  # fmt: skip
                rendered.append(peer)
            item[peers] = rendered
        if rule.ports:
            item["ports"] = [
                {"protocol": "UDP" if p.protocol == 2 else "TCP",
                 **({"port": p.port_name or p.port} if (p.port or p.port_name) else {}),
                 **({"endPort": p.end_port} if p.end_port else {})}
                for p in rule.ports
            ]  # fmt: skip
        out.append(item)
    return out


def render_network_policy(obj: policy_pb2.NetworkPolicy, meta: dict[str, Any]) -> dict[str, Any]:
    s = obj.spec
    spec: dict[str, Any] = {
        "podSelector": _render_selector(s.pod_selector),
        "policyTypes": ["Ingress" if t == policy_pb2.POLICY_TYPE_INGRESS else "Egress" for t in s.policy_types],
    }
    if s.ingress:
        spec["ingress"] = _render_rules(s.ingress, "from")
    if s.egress:
        spec["egress"] = _render_rules(s.egress, "to")
    return {"apiVersion": POLICY_API, "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def describe_rules(rules: Any, peers: str) -> list[str]:
    lines = []
    for rule in _render_rules(rules, peers):
        who = ", ".join(" ".join(f"{k}={v}" for k, v in peer.items()) for peer in rule.get(peers, [])) or "anyone"
        ports = ", ".join(f"{p.get('port', 'any')}{'-' + str(p['endPort']) if 'endPort' in p else ''}/{p['protocol']}"
                          for p in rule.get("ports", [])) or "any port"  # fmt: skip
        lines.append(f"{'from' if peers == 'from' else 'to'} {who} on {ports}")
    return lines
