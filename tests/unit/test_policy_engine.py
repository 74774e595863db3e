"""The policy engine against Kubernetes' NetworkPolicy semantics, in-process:
random tenants of pods, namespaces and policies; every (source, destination,
protocol, port) decided by a direct reading of the semantics and by the
lookups the router's nftables make on the engine's elements. And changes
applied one at a time end where a fresh engine given the final objects
starts."""

from __future__ import annotations

import ipaddress
import random

import pytest
from google.protobuf import json_format

from pinet.api.network.v1 import policy_pb2
from services.netagent.policy_engine import (
    BY_BLOCK,
    BY_POD,
    IDS,
    ISOLATED,
    PodInfo,
    State,
    TenantPolicies,
    resolve,
    segment,
)
from services.netagent.policy_model import BlockPeer, PodPeer, Policy, compile_policy

NAMESPACES = ("x", "y")
APPS = ("a", "b", "c")
TCP, UDP = 6, 17
OUTSIDE = ("198.51.100.7", "198.51.100.200", "203.0.113.9")


def _selector(rng: random.Random) -> dict[str, object]:
    choice = rng.random()
    if choice < 0.25:
        return {}
    if choice < 0.6:
        return {"matchLabels": {"app": rng.choice(APPS)}}
    if choice < 0.8:
        return {"matchExpressions": [{"key": "app", "operator": 2, "values": [rng.choice(APPS)]}]}
    return {"matchExpressions": [{"key": "tier", "operator": rng.choice((3, 4))}]}


def _peer(rng: random.Random) -> dict[str, object]:
    choice = rng.random()
    if choice < 0.3:
        return {"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]} if rng.random() < 0.5
                else {"cidr": "0.0.0.0/0"}}  # fmt: skip
    peer: dict[str, object] = {}
    if choice < 0.8:
        peer["podSelector"] = _selector(rng)
    if choice > 0.6:
        peer["namespaceSelector"] = rng.choice(({}, {"matchLabels": {"team": "red"}}))
    return peer


def _port(rng: random.Random) -> dict[str, object]:
    choice = rng.random()
    proto = rng.choice((1, 2))
    if choice < 0.4:
        return {"protocol": proto, "port": rng.choice((80, 81))}
    if choice < 0.6:
        return {"protocol": proto, "port": 80, "endPort": 81}
    if choice < 0.8:
        return {"protocol": proto, "portName": "serve"}
    return {"protocol": proto}


def _rules(rng: random.Random) -> list[dict[str, object]]:
    return [
        {
            "peers": [_peer(rng) for _ in range(rng.randint(0, 2))],
            "ports": [_port(rng) for _ in range(rng.randint(0, 2))],
        }
        for _ in range(rng.randint(0, 2))
    ]


def random_policy(rng: random.Random, name: str) -> policy_pb2.NetworkPolicy:
    types = rng.choice(([1], [2], [1, 2]))
    doc = {
        "metadata": {"name": name, "namespace": rng.choice(NAMESPACES)},
        "spec": {"podSelector": _selector(rng), "policyTypes": types, "ingress": _rules(rng), "egress": _rules(rng)},
    }
    return json_format.ParseDict(doc, policy_pb2.NetworkPolicy())


def random_pod(rng: random.Random, uid: str, ip: str) -> PodInfo:
    labels = {"app": rng.choice(APPS)}
    if rng.random() < 0.5:
        labels["tier"] = "web"
    serve = rng.choice((80, 81))
    return PodInfo(
        uid,
        ip,
        rng.choice(NAMESPACES),
        frozenset(labels.items()),
        frozenset({(TCP, "serve", serve), (UDP, "serve", serve)}),
    )


# ---------------------------------------------------------------- the truth


def _peer_has(policy: Policy, peer: object, ns_labels: dict[str, dict[str, str]], other: PodInfo | str) -> bool:
    if isinstance(peer, BlockPeer):
        address = int(ipaddress.IPv4Address(other.ip if isinstance(other, PodInfo) else other))
        return any(first <= address <= last for first, last in peer.ranges)
    assert isinstance(peer, PodPeer)
    if not isinstance(other, PodInfo):
        return False
    if peer.namespaces is None:
        if other.namespace != policy.namespace:
            return False
    elif not peer.namespaces.matches(
        {**ns_labels.get(other.namespace, {}), "kubernetes.io/metadata.name": other.namespace}
    ):
        return False
    return peer.pods.matches(dict(other.labels))


def _side_allows(policies: list[Policy], ns_labels: dict[str, dict[str, str]], pod: PodInfo, other: PodInfo | str,
                 proto: int, port: int, ingress: bool) -> bool:  # fmt: skip
    selecting = [
        p for p in policies
        if p.namespace == pod.namespace and p.target.matches(dict(pod.labels))
        and (p.ingress if ingress else p.egress) is not None
    ]  # fmt: skip
    if not selecting:
        return True
    destination = pod if ingress else other
    for p in selecting:
        for rule in (p.ingress if ingress else p.egress) or ():
            for peer in rule.peers:
                if not _peer_has(p, peer, ns_labels, other):
                    continue
                for want in rule.ports:
                    if isinstance(destination, str) and not ingress and not hasattr(want, "ports"):
                        continue
                    named = destination.ports if isinstance(destination, PodInfo) else frozenset()
                    for (p0, p1), (q0, q1) in resolve(want, named):
                        if p0 <= proto <= p1 and q0 <= port <= q1:
                            return True
    return False


def truth(policies: list[Policy], ns_labels: dict[str, dict[str, str]], src: PodInfo | str, dst: PodInfo | str,
          proto: int, port: int) -> bool:  # fmt: skip
    if isinstance(src, PodInfo) and not _side_allows(policies, ns_labels, src, dst, proto, port, ingress=False):
        return False
    return not (isinstance(dst, PodInfo) and not _side_allows(policies, ns_labels, dst, src, proto, port, True))


# ------------------------------------------------------ what nftables does


def _within(text: str, value: int, address: bool = False) -> bool:
    parse = (lambda v: int(ipaddress.IPv4Address(v))) if address else int
    first, _, last = text.partition("-")
    return parse(first) <= value <= parse(last or first)


def router_allows(state: State, src: str, dst: str, proto: int, port: int) -> bool:
    maps = state.maps
    ids = {key[0]: int(v) for key, v in maps[IDS].items()}

    def lookup(direction: str, target: str, peer: str) -> bool:
        mark = ids.get(peer, 0)
        any_name, proto_name, port_name = BY_POD[direction]
        if (target, str(mark)) in maps[any_name] or (target, str(mark), str(proto)) in maps[proto_name]:
            return True
        if (target, str(mark), str(proto), str(port)) in maps[port_name]:
            return True
        peer_int = int(ipaddress.IPv4Address(peer))
        return any(
            key[0] == target and _within(key[1], peer_int, True) and _within(key[2], proto) and _within(key[3], port)
            for key in maps[BY_BLOCK[direction]]
        )

    if (src,) in maps[ISOLATED["eg"]] and not lookup("eg", src, dst):
        return False
    return not ((dst,) in maps[ISOLATED["in"]] and not lookup("in", dst, src))


def _no_overlaps(state: State) -> None:
    for name in BY_BLOCK.values():
        groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for key in state.maps[name]:
            split = 1
            groups.setdefault(key[:split], []).append(key[split:])
        for boxes in groups.values():
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    overlap = all(
                        _bounds(x)[0] <= _bounds(y)[1] and _bounds(y)[0] <= _bounds(x)[1]
                        for x, y in zip(a, b, strict=True)
                    )
                    assert not overlap, f"{name}: {a} and {b} overlap (nft refuses that)"


def _bounds(text: str) -> tuple[int, int]:
    parse = (lambda v: int(ipaddress.IPv4Address(v))) if "." in text else int
    first, _, last = text.partition("-")
    return parse(first), parse(last or first)


@pytest.mark.parametrize("seed", range(40))
def test_elements_decide_as_kubernetes_does(seed: int) -> None:
    rng = random.Random(seed)
    ns_labels = {"x": {"team": "red"}} if rng.random() < 0.5 else {"y": {"team": "red"}}
    pods = [random_pod(rng, f"u{i}", f"10.244.0.{10 + i}") for i in range(6)]
    objects = [random_policy(rng, f"p{i}") for i in range(rng.randint(1, 4))]
    engine = TenantPolicies(ns_labels)
    for pod in pods:
        engine.set_pod(pod, pod.uid)
    for obj in objects:
        engine.set_policy(f"{obj.metadata.namespace}/{obj.metadata.name}", compile_policy(obj))
    state = engine.state()
    _no_overlaps(state)
    policies = [compile_policy(o) for o in objects]
    wrong = []
    ends: list[PodInfo | str] = [*pods, *OUTSIDE]
    for src in ends:
        for dst in ends:
            if src is dst or (isinstance(src, str) and isinstance(dst, str)):
                continue
            for proto in (TCP, UDP):
                for port in (80, 81, 443):
                    want = truth(policies, ns_labels, src, dst, proto, port)
                    s_ip = src.ip if isinstance(src, PodInfo) else src
                    d_ip = dst.ip if isinstance(dst, PodInfo) else dst
                    if router_allows(state, s_ip, d_ip, proto, port) != want:
                        wrong.append(f"{s_ip}->{d_ip} {proto}/{port}: Kubernetes says {want}")
    assert not wrong, "\n".join(wrong[:20]) + "\n" + "\n".join(json_format.MessageToJson(o) for o in objects)


@pytest.mark.parametrize("seed", range(30))
def test_changes_one_at_a_time_end_where_a_fresh_start_does(seed: int) -> None:
    rng = random.Random(1000 + seed)
    engine = TenantPolicies()
    pods: dict[str, PodInfo] = {}
    policies: dict[str, policy_pb2.NetworkPolicy] = {}
    ns_labels: dict[str, dict[str, str]] = {}
    applied = State({})
    for _step in range(60):
        roll = rng.random()
        if roll < 0.35:
            uid = f"u{rng.randint(0, 7)}"
            pod = random_pod(rng, uid, f"10.244.1.{rng.randint(1, 9)}") if rng.random() < 0.8 else None
            if pod is not None and any(p.ip == pod.ip and p.uid != uid for p in pods.values()):
                continue
            engine.set_pod(pod, uid)
            if pod is None:
                pods.pop(uid, None)
            else:
                pods[uid] = pod
        elif roll < 0.85:
            obj = random_policy(rng, f"p{rng.randint(0, 4)}")
            key = f"{obj.metadata.namespace}/{obj.metadata.name}"
            if rng.random() < 0.25:
                engine.set_policy(key, None)
                policies.pop(key, None)
            else:
                engine.set_policy(key, compile_policy(obj))
                policies[key] = obj
        else:
            ns = rng.choice(NAMESPACES)
            labels = {"team": "red"} if rng.random() < 0.5 else {}
            engine.set_namespace(ns, labels)
            ns_labels[ns] = labels
        _apply(applied, engine.flush())
    fresh = TenantPolicies({k: v for k, v in ns_labels.items() if v})
    for uid, pod in pods.items():
        fresh.set_pod(pod, uid)
    for key, obj in policies.items():
        fresh.set_policy(key, compile_policy(obj))
    want, got = fresh.state(), engine.state()
    assert {k: v for k, v in got.maps.items() if v} == {k: v for k, v in want.maps.items() if v} or _same_decisions(
        got, want, pods
    )
    assert {k: v for k, v in applied.maps.items() if v} == {k: v for k, v in got.maps.items() if v}


def _same_decisions(a: State, b: State, pods: dict[str, PodInfo]) -> bool:
    """Identity numbers may differ between two histories; what they decide may not."""
    for src in pods.values():
        for dst in pods.values():
            for proto in (TCP, UDP):
                for port in (80, 81):
                    if router_allows(a, src.ip, dst.ip, proto, port) != router_allows(b, src.ip, dst.ip, proto, port):
                        return False
    return True


def _apply(state: State, changes: object) -> None:
    from services.netagent.policy_engine import Changes

    assert isinstance(changes, Changes)
    for name, keys in changes.remove.items():
        for key in keys:
            assert key in state.maps.get(name, {}), f"{name}: removing {key}, which is not there"
            del state.maps[name][key]
    for name, items in changes.add.items():
        for key, value in items.items():
            assert key not in state.maps.get(name, {}), f"{name}: adding {key} twice"
            state.maps.setdefault(name, {})[key] = value


def test_segments_are_disjoint_and_keep_the_lowest_value() -> None:
    boxes: list[tuple[tuple[tuple[int, int], ...], int]] = [(((80, 81),), 2), (((80, 80),), 1), (((0, 65535),), 3)]
    assert segment(boxes) == [(((0, 79),), 3), (((80, 80),), 1), (((81, 81),), 2), (((82, 65535),), 3)]
    assert segment([(((1, 5), (1, 1)), 1), (((6, 9), (1, 1)), 1)]) == [(((1, 9), (1, 1)), 1)]
