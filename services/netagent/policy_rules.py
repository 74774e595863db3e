"""The nftables layout of a tenant's network policies in its router, and
the scripts that fill it (pure logic; policy_engine.py computes the
elements, policy_tables.py applies them).

A table of its own, `ip pinet-policy`, so that the policies' elements and
counters come and go without touching the isolation tables. Its one base
chain sits at postrouting: every packet a router passes on, whether routed,
bridged between two pods, sent on by IPVS or translated by the load
balancer, crosses it after destination NAT (so a Service's address is
already its endpoint's, as Kubernetes wants egress rules checked) and
before source NAT (so traffic from a floating IP still carries the client's
address, checked on the host where it entered). Only a connection's first
packet is looked at; replies and later packets pass on the first rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pinet.hostnet import names
from pinet.hostnet.nft import BaseRules, base_rules
from services.netagent.policy_engine import (
    BY_BLOCK,
    IDS,
    ISOLATED,
    POD_ANY,
    POD_PORT,
    POD_PROTOCOL,
    Changes,
    Key,
    State,
)

TABLE = names.POLICY_TABLE
_BLOCK_KEY = "ipv4_addr . ipv4_addr . inet_proto . inet_service"


# What a pod's isolation element is also written to: a set with a counter
# per element, whose lookup is the drop (the isolation sets' own lookups
# count every connection, allowed or not).
DROPS = {ISOLATED[d]: f"np-{d}-drop" for d in ("in", "eg")}
# The address blocks' interval sets are split by the pod address's last
# bits: deleting from an interval set makes libnftables read all of its
# elements first (33 ms per command at 7,000 elements), so each shard is a
# sixteenth of the work. One vmap lookup picks the shard.
SHARDS = 16


def shard_of(name: str, address: str) -> str:
    return f"{name}-{int(address.rsplit('.', 1)[1]) % SHARDS}"


def unsharded(name: str) -> str:
    for d in ("in", "eg"):
        if name.startswith(BY_BLOCK[d] + "-"):
            return BY_BLOCK[d]
    return name


def logical_set(name: str) -> str:
    """The engine's name for a kernel set (a shard, a drop set)."""
    drops = {drop: isolation for isolation, drop in DROPS.items()}
    return drops.get(name, unsharded(name))


def _with_drops(maps: dict[str, Any]) -> dict[str, Any]:
    """What the kernel holds beside the engine's maps: each isolation set's
    elements in its drop set too."""
    out = dict(maps)
    for name, items in maps.items():
        if name in DROPS:
            have = out.get(DROPS[name])
            out[DROPS[name]] = items if have is None else (have | items)
    return out


def base() -> BaseRules:
    """Pods and blocks are sets with a counter per element: each counts the
    connections it allowed (policy_engine's values say for which policy), so
    no counter objects are needed (libnftables reads every object of a table
    before each command, which made a change cost 50 ms at 10,000 policies)."""
    t = TABLE
    ports = "meta l4proto . th dport"
    sets = [
        (POD_ANY, "ipv4_addr . mark", ""),
        (POD_PROTOCOL, "ipv4_addr . mark . inet_proto", ""),
        (POD_PORT, "ipv4_addr . mark . inet_proto . inet_service", ""),
    ]
    block_key = "ipv4_addr . ipv4_addr . inet_proto . inet_service"
    body = [
        f"add table {t}",
        f"add map {t} {IDS} {{ type ipv4_addr : mark; }}",
        *(f"add set {t} {ISOLATED[d]} {{ type ipv4_addr; }}" for d in ("in", "eg")),
        *(f"add set {t} {DROPS[ISOLATED[d]]} {{ type ipv4_addr; counter; }}" for d in ("in", "eg")),
        *(
            f"add set {t} {kind[d]} {{ type {key};{flags} counter; }}"
            for kind, key, flags in sets
            for d in ("in", "eg")
        ),
        *(
            f"add set {t} {BY_BLOCK[d]}-{k} {{ type {block_key}; flags interval; counter; }}"
            for d in ("in", "eg")
            for k in range(SHARDS)
        ),
        f"add chain {t} postrouting {{ type filter hook postrouting priority filter; policy accept; }}",
        f"flush chain {t} postrouting",
        f"add chain {t} ingress",
        f"flush chain {t} ingress",
        f"add chain {t} egress",
        f"flush chain {t} egress",
        f"add rule {t} postrouting ct state != new accept",
        # Traffic from outside that the load balancer sent on to a pod on
        # another host, source-NATed to this tenant's router there: its
        # policies were checked on the host it entered, with its real source.
        f"add rule {t} postrouting ip saddr {names.ROUTER_IDENTITY_NET} accept",
        f"add rule {t} postrouting ip saddr @{ISOLATED['eg']} jump egress",
        f"add rule {t} postrouting ip daddr @{ISOLATED['in']} jump ingress",
    ]
    for d, chain, pod, peer in (("eg", "egress", "saddr", "daddr"), ("in", "ingress", "daddr", "saddr")):
        body += [
            f"add rule {t} {chain} meta mark set 0",
            f"add rule {t} {chain} meta mark set ip {peer} map @{IDS}",
            f"add rule {t} {chain} ip {pod} . meta mark . {ports} @{POD_PORT[d]} return",
            f"add rule {t} {chain} ip {pod} . meta mark . meta l4proto @{POD_PROTOCOL[d]} return",
            f"add rule {t} {chain} ip {pod} . meta mark @{POD_ANY[d]} return",
        ]
        shards = []
        for k in range(SHARDS):
            # goto: the shard's return leaves the direction's chain too.
            shards.append(f"0.0.0.{k} : goto {chain}-blocks-{k}")
            body += [
                f"add chain {t} {chain}-blocks-{k}",
                f"flush chain {t} {chain}-blocks-{k}",
                f"add rule {t} {chain}-blocks-{k} ip {pod} . ip {peer} . {ports} @{BY_BLOCK[d]}-{k} return",
                f"add rule {t} {chain}-blocks-{k} ip {pod} @{DROPS[ISOLATED[d]]} drop",
            ]
        body.append(f"add rule {t} {chain} ip {pod} & 0.0.0.{SHARDS - 1} vmap {{ {', '.join(shards)} }}")
    return base_rules(body, t)


_INTERVAL_SETS = tuple(BY_BLOCK.values())
# The sets whose elements count connections (allowed, or dropped for DROPS).
COUNTING = (
    *DROPS.values(), *POD_ANY.values(), *POD_PROTOCOL.values(), *POD_PORT.values(),
    *(f"{BY_BLOCK[d]}-{k}" for d in ("in", "eg") for k in range(SHARDS)),
)  # fmt: skip


def _key_text(name: str, key: Key) -> str:
    """nft (1.0.6) cannot delete an element of a concatenated interval set
    spelt with single values only ("No such file or directory"), so the
    port is always written as a range there."""
    if name in _INTERVAL_SETS and "-" not in key[-1]:
        key = (*key[:-1], f"{key[-1]}-{key[-1]}")
    return " . ".join(key)


def element_lines(verb: str, name: str, items: Iterable[tuple[Key, str]]) -> str:
    """`add element` or `delete element` of (key, value) items: with the
    value into the np-ids map, the key alone into every set (its shard's)."""
    by_set: dict[str, list[str]] = {}
    for key, value in items:
        target = shard_of(name, key[0]) if name in _INTERVAL_SETS else name
        text = f"{_key_text(name, key)} : {value}" if name == IDS and verb == "add" else _key_text(name, key)
        by_set.setdefault(target, []).append(text)
    return "".join(
        f"{verb} element {TABLE} {target} {{ {', '.join(sorted(parts))} }}\n"
        for target, parts in sorted(by_set.items())
    )


def change_script(changes: Changes) -> str:
    """Removals, then additions; a key whose value alone changed is left in
    the sets (the value is the agent's, for its metrics) but rewritten in
    np-ids."""
    removes, adds = [], []
    add, remove = _with_drops(changes.add), _with_drops(changes.remove)
    for name in sorted(set(remove) | set(add)):
        added = add.get(name, {})
        gone = remove.get(name, set())
        if name == IDS:
            removes.append(element_lines("delete", name, ((k, "") for k in gone)))
            adds.append(element_lines("add", name, added.items()))
        else:
            removes.append(element_lines("delete", name, ((k, "") for k in gone - added.keys())))
            adds.append(element_lines("add", name, ((k, v) for k, v in added.items() if k not in gone)))
    return "".join(removes + adds)


def fill_script(state: State) -> str:
    """The elements of state, into an empty table."""
    return change_script(Changes(add=state.maps))


def diff(want: State, have: State) -> Changes:
    """have as read back: values only for np-ids (sets hold keys)."""
    out = Changes()
    for name, wanted in _with_drops(want.maps).items():
        present = have.maps.get(name, {})
        for key, value in wanted.items():
            if key not in present or (name == IDS and present[key] != value):
                out.add.setdefault(name, {})[key] = value
                if key in present:
                    out.remove.setdefault(name, set()).add(key)
        for key in present.keys() - wanted.keys():
            out.remove.setdefault(name, set()).add(key)
    return out
