"""NetworkPolicy objects compiled into what enforcement needs (pure logic):
selectors as values, peers as pod selections or address intervals, ports as
(protocol, range) or names to resolve on the destination pod."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pinet.api.network.v1 import policy_pb2
from pinet.objects import labels
from pinet.objects import protocol as transport
from pinet.objects.labels import Selector

ANY_PROTOCOL = (0, 255)
ANY_PORT = (0, 65535)
ADDRESS_SPACE = (0, (1 << 32) - 1)
PROTOCOL_NUMBERS = {transport.TCP: 6, transport.UDP: 17}


@dataclass(frozen=True)
class PortRange:
    protocol: tuple[int, int]  # IP protocol numbers, first-last
    ports: tuple[int, int]


@dataclass(frozen=True)
class NamedPort:
    protocol: int
    name: str


Port = PortRange | NamedPort
ALL_PORTS: tuple[Port, ...] = (PortRange(ANY_PROTOCOL, ANY_PORT),)


@dataclass(frozen=True)
class PodPeer:
    """Pods in the namespaces namespaces selects (None: the policy's own)
    whose labels pods selects."""

    namespaces: Selector | None
    pods: Selector


@dataclass(frozen=True)
class BlockPeer:
    ranges: tuple[tuple[int, int], ...]  # IPv4 address intervals, as integers


Peer = PodPeer | BlockPeer
EVERY_PEER: tuple[Peer, ...] = (PodPeer(labels.EVERYTHING, labels.EVERYTHING), BlockPeer((ADDRESS_SPACE,)))


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...]
    ports: tuple[Port, ...]


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    target: Selector
    ingress: tuple[Rule, ...] | None  # None: the policy does not isolate ingress
    egress: tuple[Rule, ...] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def block_ranges(block: policy_pb2.IPBlock) -> tuple[tuple[int, int], ...]:
    """cidr less its excepts, as disjoint intervals."""
    nets = [ipaddress.IPv4Network(block.cidr, strict=False)]
    for text in block.except_cidrs:
        hole = ipaddress.IPv4Network(text, strict=False)
        nets = [part for net in nets for part in (net.address_exclude(hole) if hole.subnet_of(net) else [net])]
    merged = sorted((int(n.network_address), int(n.broadcast_address)) for n in ipaddress.collapse_addresses(nets))
    out: list[tuple[int, int]] = []
    for first, last in merged:
        if out and first == out[-1][1] + 1:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return tuple(out)


def _port(p: policy_pb2.NetworkPolicyPort) -> Port:
    number = PROTOCOL_NUMBERS[transport.effective(p.protocol)]
    if p.port_name:
        return NamedPort(number, p.port_name)
    if not p.port:
        return PortRange((number, number), ANY_PORT)
    return PortRange((number, number), (p.port, p.end_port or p.port))


def _peer(p: policy_pb2.NetworkPolicyPeer) -> Peer:
    if p.HasField("ip_block"):
        return BlockPeer(block_ranges(p.ip_block))
    namespaces = labels.from_proto(p.namespace_selector) if p.HasField("namespace_selector") else None
    return PodPeer(namespaces, labels.from_proto(p.pod_selector))


def _rules(rules: list[policy_pb2.NetworkPolicyRule]) -> tuple[Rule, ...]:
    out = []
    for rule in rules:
        # No peers: every source or destination, pods and the world alike
        # (the pods named too, so that a named port resolves on them).
        peers = tuple(_peer(p) for p in rule.peers) or EVERY_PEER
        out.append(Rule(peers, tuple(_port(p) for p in rule.ports) or ALL_PORTS))
    return tuple(out)


def compile_policy(policy: policy_pb2.NetworkPolicy) -> Policy:
    spec = policy.spec
    types = set(spec.policy_types) or {policy_pb2.POLICY_TYPE_INGRESS}
    return Policy(
        namespace=policy.metadata.namespace or "default",
        name=policy.metadata.name,
        target=labels.from_proto(spec.pod_selector),
        ingress=_rules(list(spec.ingress)) if policy_pb2.POLICY_TYPE_INGRESS in types else None,
        egress=_rules(list(spec.egress)) if policy_pb2.POLICY_TYPE_EGRESS in types else None,
    )
