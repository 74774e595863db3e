"""Validation of NetworkPolicy and Namespace objects with Kubernetes' rules
(pure logic). Every rejection names the field at fault in the manifest's
spelling (`spec.ingress[0].from[1].ipBlock.except[0]`)."""

from __future__ import annotations

import ipaddress

from pinet.api.network.v1 import policy_pb2
from pinet.objects import protocol as transport
from services.network import validation
from services.network.validation import fail

NAME_LABEL = "kubernetes.io/metadata.name"
INGRESS, EGRESS = policy_pb2.POLICY_TYPE_INGRESS, policy_pb2.POLICY_TYPE_EGRESS
TYPE_NAMES = {INGRESS: "Ingress", EGRESS: "Egress"}
_SET_OPERATORS = (policy_pb2.SELECTOR_OPERATOR_IN, policy_pb2.SELECTOR_OPERATOR_NOT_IN)
_EXIST_OPERATORS = (policy_pb2.SELECTOR_OPERATOR_EXISTS, policy_pb2.SELECTOR_OPERATOR_DOES_NOT_EXIST)


def label_selector(selector: policy_pb2.LabelSelector, path: str) -> None:
    validation.labels(selector.match_labels, f"{path}.matchLabels")
    for i, expr in enumerate(selector.match_expressions):
        where = f"{path}.matchExpressions[{i}]"
        validation.label_key(expr.key, f"{where}.key")
        if expr.operator in _SET_OPERATORS:
            if not expr.values:
                raise fail(f"{where}.values", "must be non-empty when operator is In or NotIn")
        elif expr.operator in _EXIST_OPERATORS:
            if expr.values:
                raise fail(f"{where}.values", "must be empty when operator is Exists or DoesNotExist")
        else:
            raise fail(f"{where}.operator", "must be In, NotIn, Exists or DoesNotExist")
        for j, value in enumerate(expr.values):
            validation.label_value(value, f"{where}.values[{j}]")


def _cidr(text: str, path: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise fail(path, f"{text!r} is not a CIDR (for example 198.51.100.0/24)") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise fail(path, f"{text!r}: pinet networks are IPv4 only")
    return net


def ip_block(block: policy_pb2.IPBlock, path: str) -> None:
    if not block.cidr:
        raise fail(f"{path}.cidr", "required")
    net = _cidr(block.cidr, f"{path}.cidr")
    for i, text in enumerate(block.except_cidrs):
        inner = _cidr(text, f"{path}.except[{i}]")
        if not (inner.subnet_of(net) and inner != net):
            raise fail(f"{path}.except[{i}]", f"{text!r} must be a strict subset of cidr {block.cidr}")


def peer(p: policy_pb2.NetworkPolicyPeer, path: str) -> None:
    selectors = [f for f in ("pod_selector", "namespace_selector") if p.HasField(f)]  # type: ignore[arg-type]
    if p.HasField("ip_block"):
        if selectors:
            raise fail(path, "ipBlock may not be combined with podSelector or namespaceSelector")
        ip_block(p.ip_block, f"{path}.ipBlock")
        return
    if not selectors:
        raise fail(path, "must specify a peer: podSelector, namespaceSelector or ipBlock")
    if p.HasField("pod_selector"):
        label_selector(p.pod_selector, f"{path}.podSelector")
    if p.HasField("namespace_selector"):
        label_selector(p.namespace_selector, f"{path}.namespaceSelector")


def port(p: policy_pb2.NetworkPolicyPort, path: str) -> None:
    if p.protocol and p.protocol not in transport.KNOWN:
        raise fail(f"{path}.protocol", "must be TCP or UDP (pinet does not carry SCTP)")
    if p.port and p.port_name:
        raise fail(f"{path}.port", "a number or a name, not both")
    if p.port:
        validation.port_number(p.port, f"{path}.port")
    elif p.port_name:
        validation.port_name(p.port_name, f"{path}.port")
    if p.end_port:
        if not p.port:
            raise fail(f"{path}.endPort", "may only be set with a numeric port")
        if not p.port <= p.end_port <= 65535:
            raise fail(f"{path}.endPort", f"must be between port ({p.port}) and 65535, got {p.end_port}")


def _rules(rules: list[policy_pb2.NetworkPolicyRule], path: str, peers: str) -> None:
    for i, rule in enumerate(rules):
        for j, p in enumerate(rule.peers):
            peer(p, f"{path}[{i}].{peers}[{j}]")
        for j, pt in enumerate(rule.ports):
            port(pt, f"{path}[{i}].ports[{j}]")


def apply_defaults(policy: policy_pb2.NetworkPolicy) -> None:
    """policyTypes as Kubernetes sets them when left out; TCP for ports."""
    spec = policy.spec
    if not spec.policy_types:
        spec.policy_types.append(INGRESS)
        if spec.egress:
            spec.policy_types.append(EGRESS)
    for rule in (*spec.ingress, *spec.egress):
        for p in rule.ports:
            p.protocol = transport.effective(p.protocol)


def network_policy(policy: policy_pb2.NetworkPolicy) -> None:
    validation.metadata(policy.metadata)
    spec = policy.spec
    label_selector(spec.pod_selector, "spec.podSelector")
    seen = set()
    for i, kind in enumerate(spec.policy_types):
        if kind not in TYPE_NAMES:
            raise fail(f"spec.policyTypes[{i}]", "must be Ingress or Egress")
        if kind in seen:
            raise fail(f"spec.policyTypes[{i}]", f"{TYPE_NAMES[kind]} is listed twice")
        seen.add(kind)
    _rules(list(spec.ingress), "spec.ingress", "from")
    _rules(list(spec.egress), "spec.egress", "to")


def namespace(ns: policy_pb2.Namespace) -> None:
    meta = ns.metadata
    validation.dns1123_label(meta.name, "metadata.name")
    if meta.namespace:
        raise fail("metadata.namespace", "a namespace belongs to no namespace; leave it out")
    validation.labels(meta.labels, "metadata.labels")
    if meta.labels.get(NAME_LABEL, meta.name) != meta.name:
        raise fail(f"metadata.labels[{NAME_LABEL}]", f"must be the namespace's name ({meta.name!r})")
