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
from typing import cast

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


def base() -> BaseRules:
    t = TABLE
    ports = "meta l4proto . th dport"
    body = [
        f"add table {t}",
        f"add map {t} {IDS} {{ type ipv4_addr : mark; }}",
        *(f"add map {t} {ISOLATED[d]} {{ type ipv4_addr : counter; }}" for d in ("in", "eg")),
        *(f"add map {t} {POD_ANY[d]} {{ type ipv4_addr . mark : counter; }}" for d in ("in", "eg")),
        *(f"add map {t} {POD_PROTOCOL[d]} {{ type ipv4_addr . mark . inet_proto : counter; }}" for d in ("in", "eg")),
        *(
            f"add map {t} {POD_PORT[d]} {{ type ipv4_addr . mark . inet_proto . inet_service : counter; }}"
            for d in ("in", "eg")
        ),
        *(f"add map {t} {BY_BLOCK[d]} {{ type {_BLOCK_KEY} : counter; flags interval; }}" for d in ("in", "eg")),
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
        f"add rule {t} egress meta mark set 0",
        f"add rule {t} egress meta mark set ip daddr map @{IDS}",
        f"add rule {t} egress counter name ip saddr . meta mark map @{POD_ANY['eg']} return",
        f"add rule {t} egress counter name ip saddr . meta mark . meta l4proto map @{POD_PROTOCOL['eg']} return",
        f"add rule {t} egress counter name ip saddr . meta mark . {ports} map @{POD_PORT['eg']} return",
        f"add rule {t} egress counter name ip saddr . ip daddr . {ports} map @{BY_BLOCK['eg']} return",
        f"add rule {t} egress counter name ip saddr map @{ISOLATED['eg']} drop",
        f"add rule {t} ingress meta mark set 0",
        f"add rule {t} ingress meta mark set ip saddr map @{IDS}",
        f"add rule {t} ingress counter name ip daddr . meta mark map @{POD_ANY['in']} return",
        f"add rule {t} ingress counter name ip daddr . meta mark . meta l4proto map @{POD_PROTOCOL['in']} return",
        f"add rule {t} ingress counter name ip daddr . meta mark . {ports} map @{POD_PORT['in']} return",
        f"add rule {t} ingress counter name ip daddr . ip saddr . {ports} map @{BY_BLOCK['in']} return",
        f"add rule {t} ingress counter name ip daddr map @{ISOLATED['in']} drop",
    ]
    return base_rules(body, t)


def _value(name: str, value: str) -> str:
    return value if name == IDS else f'"{value}"'


_INTERVAL_MAPS = tuple(BY_BLOCK.values())


def _key_text(name: str, key: Key) -> str:
    """nft (1.0.6) cannot delete an element of a concatenated interval map
    spelt with single values only ("No such file or directory"), so the
    port is always written as a range there."""
    if name in _INTERVAL_MAPS and "-" not in key[-1]:
        key = (*key[:-1], f"{key[-1]}-{key[-1]}")
    return " . ".join(key)


def element_lines(verb: str, name: str, items: Iterable[tuple[Key, str]] | Iterable[Key]) -> str:
    """One `add element` (items of (key, value)) or `delete element` (keys)."""
    parts = []
    for item in items:
        if verb == "delete":
            parts.append(_key_text(name, item))  # type: ignore[arg-type]
        else:
            key, value = cast(tuple[Key, str], item)
            parts.append(f"{_key_text(name, key)} : {_value(name, value)}")
    if not parts:
        return ""
    return f"{verb} element {TABLE} {name} {{ {', '.join(sorted(parts))} }}\n"


def change_script(changes: Changes) -> str:
    lines = [f"add counter {TABLE} {c}\n" for c in sorted(changes.add_counters)]
    lines += [element_lines("delete", name, keys) for name, keys in sorted(changes.remove.items())]
    lines += [element_lines("add", name, items.items()) for name, items in sorted(changes.add.items())]
    lines += [f"delete counter {TABLE} {c}\n" for c in sorted(changes.remove_counters)]
    return "".join(lines)


def fill_script(state: State) -> str:
    """The counters and elements of state, into an empty table."""
    return change_script(Changes(add_counters=state.counters, add=state.maps))


def diff(want: State, have: State) -> Changes:
    out = Changes(want.counters - have.counters, have.counters - want.counters)
    for name, wanted in want.maps.items():
        present = have.maps.get(name, {})
        for key, value in wanted.items():
            if present.get(key) != value:
                out.add.setdefault(name, {})[key] = value
                if key in present:
                    out.remove.setdefault(name, set()).add(key)
        for key in present.keys() - wanted.keys():
            out.remove.setdefault(name, set()).add(key)
    return out
