"""A tenant's network policies as nftables set elements, kept up to date
one change at a time (pure logic; policy_rules.py lays out the table).

Pods are grouped into identities: pods of one namespace with the same
labels and named ports are indistinguishable to every policy, so a rule's
peers are a set of identity numbers, and the router's lookup is

    peer pod -> identity        (np-ids: address -> mark)
    target . peer identity [. protocol [. port]]   allowed (np-*-pods-*)
    target . peer address . protocol . port        allowed (np-*-blocks)

a handful of lookups per new connection whatever the number of policies.
Every element is reference-counted by the policies that produce it, so the
union of policies is what the sets hold and a change adds and removes only
the elements whose count crosses zero. An element's value (kept here, not
in the kernel) names the lowest-numbered policy producing it and the
verdict: what the element's own counter counts is reported for that policy.

What a change costs: a pod added or removed, its elements with the policies
selecting it as a target or as a peer (found through a label index, not by
evaluating every policy); a policy, its own elements; a namespace's labels,
the tenant's policies anew (rare).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.netagent.policy_model import (
    ANY_PORT,
    ANY_PROTOCOL,
    BlockPeer,
    NamedPort,
    PodPeer,
    Policy,
    Port,
    PortRange,
)

IDS = "np-ids"
ISOLATED = {"in": "np-in-iso", "eg": "np-eg-iso"}
# Pod peers by exact keys (nft 1.0.6 lists some elements of interval maps
# whose key holds a mark with a garbled mark, which defeats the read-back):
# any protocol and port, any port of one protocol, or one port.
POD_ANY = {"in": "np-in-pods-any", "eg": "np-eg-pods-any"}
POD_PROTOCOL = {"in": "np-in-pods-proto", "eg": "np-eg-pods-proto"}
POD_PORT = {"in": "np-in-pods-port", "eg": "np-eg-pods-port"}
BY_POD = {d: (POD_ANY[d], POD_PROTOCOL[d], POD_PORT[d]) for d in ("in", "eg")}
BY_BLOCK = {"in": "np-in-blocks", "eg": "np-eg-blocks"}
DIRECTIONS = ("in", "eg")
MAP_DIRECTION = {name: d for d in DIRECTIONS for name in (ISOLATED[d], *BY_POD[d], BY_BLOCK[d])}
DIRECTION_NAMES = {"in": "ingress", "eg": "egress"}

Key = tuple[str, ...]
Slot = tuple[int, str, int, int]  # policy number, direction, rule index, peer index
T = TypeVar("T")


def allowed_counter(number: int, direction: str) -> str:
    """The value of an element allowing connections for policy number."""
    return f"np{number}-{direction}"


def dropped_counter(number: int, direction: str) -> str:
    """The value of a pod's isolation element: its drops count for policy number."""
    return f"np{number}-{direction}-drop"


def policy_number(value: str) -> tuple[int, str, str]:
    """(policy number, direction, verdict) of an element's value."""
    number, direction, *drop = value[2:].split("-")
    return int(number), direction, "dropped" if drop else "allowed"


def _range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _addresses(first: int, last: int) -> str:
    a, b = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
    return str(a) if first == last else f"{a}-{b}"


@dataclass(frozen=True)
class PodInfo:
    uid: str
    ip: str
    namespace: str
    labels: frozenset[tuple[str, str]]
    ports: frozenset[tuple[int, str, int]]  # (IP protocol number, name, number) of named container ports

    @property
    def identity(self) -> tuple[str, frozenset[tuple[str, str]], frozenset[tuple[int, str, int]]]:
        return (self.namespace, self.labels, self.ports)


def resolve(port: Port, named: Iterable[tuple[int, str, int]]) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """(protocol, port) intervals of port; a named port resolves to the
    container port of that name and protocol, or to nothing."""
    if isinstance(port, PortRange):
        yield port.protocol, port.ports
        return
    for protocol, name, number in named:
        if protocol == port.protocol and name == port.name:
            yield (protocol, protocol), (number, number)


class AnchorIndex(Generic[T]):
    """Items (selectors' owners) by the label pairs one of which every
    object they select carries; the rest are candidates for every object."""

    def __init__(self) -> None:
        self._by_pair: dict[tuple[str, str], set[T]] = {}
        self._always: set[T] = set()

    def add(self, item: T, anchors: frozenset[tuple[str, str]] | None) -> None:
        if anchors is None:
            self._always.add(item)
        for pair in anchors or ():
            self._by_pair.setdefault(pair, set()).add(item)

    def discard(self, item: T, anchors: frozenset[tuple[str, str]] | None) -> None:
        self._always.discard(item)
        for pair in anchors or ():
            items = self._by_pair.get(pair)
            if items is not None:
                items.discard(item)
                if not items:
                    del self._by_pair[pair]

    def candidates(self, labels: Iterable[tuple[str, str]]) -> set[T]:
        out = set(self._always)
        for pair in labels:
            out |= self._by_pair.get(pair, set())
        return out


@dataclass
class Changes:
    """What changed in the engine's maps: elements removed, then added (a
    key in both changed its value)."""

    add: dict[str, dict[Key, str]] = field(default_factory=dict)
    remove: dict[str, set[Key]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)

    def count(self) -> int:
        return sum(map(len, self.add.values())) + sum(map(len, self.remove.values()))


@dataclass
class State:
    """Everything the table should hold."""

    maps: dict[str, dict[Key, str]] = field(default_factory=dict)


class TenantPolicies:
    def __init__(self, namespace_labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._namespaces: dict[str, dict[str, str]] = {k: dict(v) for k, v in (namespace_labels or {}).items()}
        self.pods: dict[str, PodInfo] = {}
        self._pods_in: dict[str, set[str]] = {}  # namespace -> uids
        self._identity: dict[tuple[object, ...], int] = {}
        self._identity_info: dict[int, PodInfo] = {}  # a representative pod
        self._identity_pods: dict[int, set[str]] = {}
        self._free_identities: list[int] = []
        self._next_identity = 1
        self.policies: dict[str, Policy] = {}
        self.numbers: dict[str, int] = {}
        self._by_number: dict[int, Policy] = {}
        self._free_numbers: list[int] = []
        self._next_number = 1
        self._targets: dict[int, set[str]] = {}
        self._matched: dict[Slot, set[int]] = {}
        self._slots_of: dict[int, set[Slot]] = {}  # identity -> slots it is matched by
        self._target_index: dict[str, AnchorIndex[int]] = {}
        self._peer_index: AnchorIndex[Slot] = AnchorIndex()
        self._ids: dict[str, int] = {}  # pod address -> identity
        # Per map and group (the exact part of a key: target, and peer
        # identity for pods), the boxes (intervals of the other fields) each
        # policy produces, counted per policy number.
        self._boxes: dict[tuple[str, Key], dict[Box, Counter[int]]] = {}
        self._dirty: set[tuple[str, Key]] = set()
        self._elements: dict[tuple[str, Key], dict[Key, str]] = {}  # as of the last flush
        self._touched: dict[tuple[str, Key], str | None] = {}  # np-ids keys -> value before

    # ------------------------------------------------------------ inputs

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        labels = dict(self._namespaces.get(namespace, {}))
        labels["kubernetes.io/metadata.name"] = namespace
        return labels

    def set_pod(self, pod: PodInfo | None, uid: str) -> None:
        """pod None: gone (or without an address)."""
        old = self.pods.get(uid)
        if old == pod:
            return
        if old is not None:
            self._remove_pod(old)
        if pod is not None:
            self._add_pod(pod)

    def set_policy(self, key: str, policy: Policy | None) -> None:
        old = self.policies.get(key)
        if old == policy:
            return
        number = self.numbers.get(key)
        if old is not None and number is not None:
            self._unapply(number, old)
        if policy is None:
            if number is not None:
                self._release_number(key, number)
            return
        if number is None:
            number = self._assign_number(key)
        self.policies[key] = policy
        self._by_number[number] = policy
        self._apply(number, policy)

    def set_namespace(self, namespace: str, labels: Mapping[str, str] | None) -> None:
        new = dict(labels or {})
        if self._namespaces.get(namespace, {}) == new:
            return
        # Namespace selectors are evaluated per identity: every policy anew.
        everything = list(self.policies.items())
        for key, policy in everything:
            self._unapply(self.numbers[key], policy)
        if new:
            self._namespaces[namespace] = new
        else:
            self._namespaces.pop(namespace, None)
        for key, policy in everything:
            self._apply(self.numbers[key], policy)

    # ----------------------------------------------------------- outputs

    def flush(self) -> Changes:
        """The changes since the last flush."""
        out = Changes()
        for (name, key), before in self._touched.items():
            identity = self._ids.get(key[0])
            after = str(identity) if identity is not None else None
            if before == after:
                continue
            if before is not None:
                out.remove.setdefault(name, set()).add(key)
            if after is not None:
                out.add.setdefault(name, {})[key] = after
        for name, group in self._dirty:
            old = self._elements.pop((name, group), {})
            new = self._group_elements(name, group)
            if new:
                self._elements[(name, group)] = new
            for key, value in new.items():
                if old.get(key) != value:
                    out.add.setdefault(name, {})[key] = value
                    if key in old:
                        out.remove.setdefault(name, set()).add(key)
            for key in old.keys() - new.keys():
                out.remove.setdefault(name, set()).add(key)
        self._dirty.clear()
        self._touched.clear()
        return out

    def state(self) -> State:
        """Everything the table should hold (flushed changes included)."""
        self.flush()
        maps: dict[str, dict[Key, str]] = {IDS: {(ip,): str(i) for ip, i in self._ids.items()}}
        for name in MAP_DIRECTION:
            maps.setdefault(name, {})
        for (name, _), elements in self._elements.items():
            maps[name].update(elements)
        return State(maps)

    def attribution(self, name: str, key: Key) -> str | None:
        """The value of element key of map name, as last flushed."""
        group = key[:1] if name in BY_BLOCK.values() else key
        return self._elements.get((name, group), {}).get(key)

    def policy_of_number(self) -> dict[int, str]:
        return {n: k for k, n in self.numbers.items()}

    # ---------------------------------------------------------- policies

    def _assign_number(self, key: str) -> int:
        number = self._free_numbers.pop() if self._free_numbers else self._next_number
        if number == self._next_number:
            self._next_number += 1
        self.numbers[key] = number
        return number

    def _release_number(self, key: str, number: int) -> None:
        del self.numbers[key]
        self.policies.pop(key, None)
        self._by_number.pop(number, None)
        self._free_numbers.append(number)

    def _slots(self, number: int, policy: Policy) -> Iterator[tuple[Slot, PodPeer]]:
        for direction, rules in (("in", policy.ingress), ("eg", policy.egress)):
            for ri, rule in enumerate(rules or ()):
                for pi, peer in enumerate(rule.peers):
                    if isinstance(peer, PodPeer):
                        yield (number, direction, ri, pi), peer

    def _peer_matches(self, policy: Policy, peer: PodPeer, pod: PodInfo) -> bool:
        if peer.namespaces is None:
            if pod.namespace != policy.namespace:
                return False
        elif not peer.namespaces.matches(self.namespace_labels(pod.namespace)):
            return False
        return peer.pods.matches(dict(pod.labels))

    def _apply(self, number: int, policy: Policy) -> None:
        self._target_index.setdefault(policy.namespace, AnchorIndex()).add(number, policy.target.anchors())
        for slot, peer in self._slots(number, policy):
            self._peer_index.add(slot, peer.pods.anchors())
            matched = {i for i, rep in self._identity_info.items() if self._peer_matches(policy, peer, rep)}
            self._matched[slot] = matched
            for i in matched:
                self._slots_of.setdefault(i, set()).add(slot)
        targets = {
            uid for uid in self._pods_in.get(policy.namespace, ())
            if policy.target.matches(dict(self.pods[uid].labels))
        }  # fmt: skip
        self._targets[number] = targets
        for uid in targets:
            self._target_elements(number, policy, self.pods[uid], 1)

    def _unapply(self, number: int, policy: Policy) -> None:
        for uid in self._targets.pop(number, set()):
            self._target_elements(number, policy, self.pods[uid], -1)
        for slot, peer in self._slots(number, policy):
            self._peer_index.discard(slot, peer.pods.anchors())
            for i in self._matched.pop(slot, set()):
                self._slots_of.get(i, set()).discard(slot)
        index = self._target_index.get(policy.namespace)
        if index is not None:
            index.discard(number, policy.target.anchors())

    # -------------------------------------------------------------- pods

    def _add_pod(self, pod: PodInfo) -> None:
        self.pods[pod.uid] = pod
        self._pods_in.setdefault(pod.namespace, set()).add(pod.uid)
        identity = self._identity.get(pod.identity)
        if identity is None:
            identity = self._new_identity(pod)
        self._identity_pods[identity].add(pod.uid)
        self._touch(IDS, (pod.ip,))
        self._ids[pod.ip] = identity
        labels = dict(pod.labels)
        for number in self._target_index.get(pod.namespace, AnchorIndex()).candidates(pod.labels):
            policy = self._policy(number)
            if policy.target.matches(labels):
                self._targets[number].add(pod.uid)
                self._target_elements(number, policy, pod, 1)

    def _remove_pod(self, pod: PodInfo) -> None:
        for number in self._target_index.get(pod.namespace, AnchorIndex()).candidates(pod.labels):
            if pod.uid in self._targets.get(number, ()):
                self._targets[number].discard(pod.uid)
                self._target_elements(number, self._policy(number), pod, -1)
        if self._ids.get(pod.ip) == self._identity.get(pod.identity):
            self._touch(IDS, (pod.ip,))
            del self._ids[pod.ip]
        identity = self._identity[pod.identity]
        members = self._identity_pods[identity]
        members.discard(pod.uid)
        if not members:
            self._drop_identity(identity, pod)
        elif self._identity_info[identity].uid == pod.uid:
            self._identity_info[identity] = self.pods[next(iter(members))]
        self._pods_in[pod.namespace].discard(pod.uid)
        del self.pods[pod.uid]

    def _new_identity(self, pod: PodInfo) -> int:
        identity = self._free_identities.pop() if self._free_identities else self._next_identity
        if identity == self._next_identity:
            self._next_identity += 1
        self._identity[pod.identity] = identity
        self._identity_info[identity] = pod
        self._identity_pods[identity] = set()
        for slot in self._peer_index.candidates(pod.labels):
            number, direction, ri, pi = slot
            policy = self._policy(number)
            rules = policy.ingress if direction == "in" else policy.egress
            rule = (rules or ())[ri]
            peer = rule.peers[pi]
            if isinstance(peer, PodPeer) and self._peer_matches(policy, peer, pod):
                self._matched[slot].add(identity)
                self._slots_of.setdefault(identity, set()).add(slot)
                for uid in self._targets.get(number, ()):
                    self._pod_elements(number, direction, self.pods[uid], identity, rule.ports, 1)
        return identity

    def _drop_identity(self, identity: int, pod: PodInfo) -> None:
        for slot in self._slots_of.pop(identity, set()):
            number, direction, ri, _ = slot
            policy = self._policy(number)
            rule = ((policy.ingress if direction == "in" else policy.egress) or ())[ri]
            for uid in self._targets.get(number, ()):
                self._pod_elements(number, direction, self.pods[uid], identity, rule.ports, -1)
            self._matched[slot].discard(identity)
        del self._identity[pod.identity]
        del self._identity_info[identity]
        del self._identity_pods[identity]
        self._free_identities.append(identity)

    def _policy(self, number: int) -> Policy:
        return self._by_number[number]

    # ---------------------------------------------------------- elements

    def _target_elements(self, number: int, policy: Policy, target: PodInfo, sign: int) -> None:
        for direction, rules in (("in", policy.ingress), ("eg", policy.egress)):
            if rules is None:
                continue
            self._ref(ISOLATED[direction], (target.ip,), (), number, sign)
            for ri, rule in enumerate(rules):
                for pi, peer in enumerate(rule.peers):
                    if isinstance(peer, BlockPeer):
                        self._block_elements(number, direction, target, peer, rule.ports, sign)
                        continue
                    for identity in self._matched.get((number, direction, ri, pi), ()):
                        self._pod_elements(number, direction, target, identity, rule.ports, sign)

    def _pod_elements(
        self, number: int, direction: str, target: PodInfo, identity: int, ports: tuple[Port, ...], sign: int
    ) -> None:
        # A named port is the destination's: the target's for ingress, the peer's for egress.
        named = target.ports if direction == "in" else self._identity_info[identity].ports
        for port in ports:
            for protocols, numbers in resolve(port, named):
                pair = (target.ip, str(identity))
                if protocols == ANY_PROTOCOL:
                    self._ref(POD_ANY[direction], pair, (), number, sign)
                elif numbers == ANY_PORT:
                    self._ref(POD_PROTOCOL[direction], (*pair, str(protocols[0])), (), number, sign)
                else:
                    # A range is spelt out port by port (exact keys only, see POD_ANY).
                    for one in range(numbers[0], numbers[1] + 1):
                        self._ref(POD_PORT[direction], (*pair, str(protocols[0]), str(one)), (), number, sign)

    def _block_elements(
        self, number: int, direction: str, target: PodInfo, peer: BlockPeer, ports: tuple[Port, ...], sign: int
    ) -> None:
        for port in ports:
            if isinstance(port, NamedPort) and direction == "eg":
                continue  # a name is a pod's port; an address block has none
            for protocol, number_range in resolve(port, target.ports):
                for addresses in peer.ranges:
                    self._ref(BY_BLOCK[direction], (target.ip,), (addresses, protocol, number_range), number, sign)

    def _touch(self, name: str, key: Key) -> None:
        if (name, key) not in self._touched:
            identity = self._ids.get(key[0])
            self._touched[(name, key)] = str(identity) if identity is not None else None

    def _ref(self, name: str, group: Key, box: Box, number: int, sign: int) -> None:
        self._dirty.add((name, group))
        boxes = self._boxes.setdefault((name, group), {})
        refs = boxes.setdefault(box, Counter())
        refs[number] += sign
        if refs[number] <= 0:
            del refs[number]
            if not refs:
                del boxes[box]
                if not boxes:
                    del self._boxes[(name, group)]

    def _group_elements(self, name: str, group: Key) -> dict[Key, str]:
        """The disjoint elements of one group (nft refuses overlapping
        intervals), each valued with the lowest policy covering it."""
        boxes = self._boxes.get((name, group), {})
        pieces = segment([(box, min(refs)) for box, refs in boxes.items()])
        direction = MAP_DIRECTION[name]
        counter = dropped_counter if name in ISOLATED.values() else allowed_counter
        out = {}
        for box, number in pieces:
            parts = (
                [_addresses(*box[0]), *(_range(*b) for b in box[1:])]
                if name in BY_BLOCK.values()
                else [_range(*b) for b in box]
            )
            out[(*group, *parts)] = counter(number, direction)
        return out


Interval = tuple[int, int]
Box = tuple[Interval, ...]


def segment(boxes: list[tuple[Box, int]]) -> list[tuple[Box, int]]:
    """Disjoint boxes covering the union of boxes, each with the lowest
    value among the boxes covering it; neighbours along the first axis with
    the same contents are merged."""
    if not boxes:
        return []
    if not boxes[0][0]:
        return [((), min(value for _, value in boxes))]
    cuts = sorted({box[0][0] for box, _ in boxes} | {box[0][1] + 1 for box, _ in boxes})
    runs: list[tuple[int, int, tuple[tuple[Box, int], ...]]] = []
    for lo, after in itertools.pairwise(cuts):
        hi = after - 1
        covering = [(box[1:], value) for box, value in boxes if box[0][0] <= lo and box[0][1] >= hi]
        if not covering:
            continue
        rest = tuple(sorted(segment(covering)))
        if runs and runs[-1][2] == rest and runs[-1][1] + 1 == lo:
            runs[-1] = (runs[-1][0], hi, rest)
        else:
            runs.append((lo, hi, rest))
    return [(((lo, hi), *box), value) for lo, hi, rest in runs for box, value in rest]
