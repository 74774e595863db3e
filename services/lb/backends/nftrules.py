"""The nftables layout of a tenant router's load balancer, and the smallest
transaction that turns one layout into another (pure logic).

Everything that grows with the number of services lives in set elements,
none of it in chains or rules, so that the lookup is one hash lookup however
many services there are, and a change is a handful of element updates:

    services  vip . proto . port        -> goto pick-N | aff-N-T | hash-N
    backends  vip . proto . port . slot -> endpoint ip . port    (slot 1..N)

A "pick" chain is shared by every service with N endpoints: it numbers the
connection into the mark (round robin, or a source hash) and DNATs through
the backends map. An "aff" chain first looks the client up in the affinity
map (entries time out after T seconds) and records the slot it chose.
Hairpin (a pod reaching itself through its service) and external traffic
sent to a pod on another host are source-NATed from two small sets.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pinet.hostnet import names
from pinet.hostnet.nft import BaseRules, base_rules
from services.lb.model import RealServer, RouterLb, Scheduler, VirtualService, VsKey

FAMILY_TABLE = names.LB_TABLE
TABLE = FAMILY_TABLE.split()[1]
AFFINITY_SIZE = 1 << 20

BackendKey = tuple[str, str, int, int]  # vip, proto, port, slot


@dataclass
class Layout:
    """The load balancer's state in one router's table."""

    base: str = ""  # name of the marker chain whose name carries the base rules' digest
    chains: set[str] = field(default_factory=set)  # pick/aff/hash chains present
    services: dict[VsKey, str] = field(default_factory=dict)  # -> target chain
    backends: dict[BackendKey, tuple[str, int]] = field(default_factory=dict)
    hairpin: set[str] = field(default_factory=set)  # local endpoint IPs
    remote: set[str] = field(default_factory=set)  # endpoint IPs on other hosts
    # What each service contributes to the sets (known for layouts computed
    # here, not for ones read from the kernel), so one service's change can
    # be planned without looking at the others.
    servers: dict[VsKey, tuple[RealServer, ...]] = field(default_factory=dict)
    refs: Counter[tuple[bool, str]] = field(default_factory=Counter)  # (remote, ip) -> services using it


def base_script(snat_ip: str, uplink: str, with_services: bool = True) -> BaseRules:
    """The table's fixed part (pinet.hostnet.nft.BaseRules)."""
    rules = []
    if with_services:
        rules.append(f"add rule {FAMILY_TABLE} prerouting ip daddr . meta l4proto . th dport vmap @services")
    rules.append(f"add rule {FAMILY_TABLE} postrouting ip saddr . ip daddr @hairpin masquerade")
    if snat_ip:
        rules.append(f'add rule {FAMILY_TABLE} postrouting iifname "{uplink}" ip daddr @remote snat ip to {snat_ip}')
    return base_rules(
        [
            f"add table {FAMILY_TABLE}",
            f"add map {FAMILY_TABLE} services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}",
            f"add map {FAMILY_TABLE} backends "
            "{ type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service; }",
            f"add map {FAMILY_TABLE} affinity {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service : mark; "
            f"size {AFFINITY_SIZE}; flags dynamic,timeout; timeout 3h; }}",
            f"add set {FAMILY_TABLE} hairpin {{ type ipv4_addr . ipv4_addr; }}",
            f"add set {FAMILY_TABLE} remote {{ type ipv4_addr; }}",
            f"add chain {FAMILY_TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
            f"add chain {FAMILY_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
            f"flush chain {FAMILY_TABLE} prerouting",
            f"flush chain {FAMILY_TABLE} postrouting",
            *rules,
        ],
        FAMILY_TABLE,
    )


def chain_name(vs: VirtualService) -> str:
    n = len(vs.real_servers)
    if vs.persistence:
        return f"aff-{n}-{vs.persistence}"
    if vs.scheduler is Scheduler.SOURCE_HASH:
        return f"hash-{n}"
    return f"pick-{n}"  # round robin; least-connection has no nftables form


def chain_script(name: str) -> str:
    kind, n_text, *rest = name.split("-")
    n = int(n_text)
    dnat = "meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport . meta mark map @backends"
    if kind == "pick":
        rules = [f"meta mark set numgen inc mod {n} offset 1", dnat]
    elif kind == "hash":
        rules = [f"meta mark set jhash ip saddr mod {n} offset 1", dnat]
    elif kind == "aff":
        timeout = int(rest[0])
        flow = "ip saddr . ip daddr . meta l4proto . th dport"
        rules = [
            f"meta mark set {flow} map @affinity",
            # A remembered slot beyond the current endpoints is chosen afresh.
            f"meta mark > {n} meta mark set 0",
            f"meta mark 0 meta mark set numgen inc mod {n} offset 1",
            f"update @affinity {{ {flow} timeout {timeout}s : meta mark }}",
            dnat,
        ]
    else:
        raise ValueError(f"not a load-balancing chain: {name}")
    lines = [f"add chain {FAMILY_TABLE} {name}", f"flush chain {FAMILY_TABLE} {name}"]
    lines += [f"add rule {FAMILY_TABLE} {name} {rule}" for rule in rules]
    return "\n".join(lines)


def is_lb_chain(name: str) -> bool:
    return name.split("-", maxsplit=1)[0] in ("pick", "aff", "hash")


def layout(r: RouterLb, marker: str) -> Layout:
    want = Layout(base=marker)
    for key, vs in r.services.items():
        _put(want, key, vs)
    return want


def _put(layout: Layout, key: VsKey, vs: VirtualService | None) -> None:
    """Adds vs (None: nothing) under key to layout, which holds nothing under
    key yet."""
    servers = tuple(s for s in vs.real_servers if s.weight > 0) if vs is not None else ()
    if vs is None or not servers:
        return
    name = chain_name(dataclasses.replace(vs, real_servers=servers))
    layout.chains.add(name)
    layout.services[key] = name
    layout.servers[key] = servers
    for slot, server in enumerate(servers, start=1):
        layout.backends[(*key, slot)] = (server.ip, server.port)
        ref = (server.remote, server.ip)
        layout.refs[ref] += 1
        if layout.refs[ref] == 1:
            (layout.remote if server.remote else layout.hairpin).add(server.ip)


def _drop(layout: Layout, key: VsKey) -> None:
    layout.services.pop(key, None)
    for slot, server in enumerate(layout.servers.pop(key, ()), start=1):
        layout.backends.pop((*key, slot), None)
        ref = (server.remote, server.ip)
        layout.refs[ref] -= 1
        if layout.refs[ref] <= 0:
            del layout.refs[ref]
            (layout.remote if server.remote else layout.hairpin).discard(server.ip)


def plan_changes(have: Layout, changed: Mapping[VsKey, VirtualService | None]) -> tuple[str, list[str]]:
    """The transaction for a few services' changes (None: removed) on top of
    have, a layout computed here, which is updated in place; the cost
    depends on the changes only. Returns the script and what it changes."""
    before = Layout(base=have.base, chains=set(have.chains))
    after = Layout(base=have.base, chains=set(have.chains))
    touched = {(s.remote, s.ip) for key in changed for s in have.servers.get(key, ())}
    touched |= {(s.remote, s.ip) for vs in changed.values() if vs is not None for s in vs.real_servers}
    was = {ref: have.refs.get(ref, 0) > 0 for ref in touched}
    for key in changed:
        for slot, server in enumerate(have.servers.get(key, ()), start=1):
            before.backends[(*key, slot)] = (server.ip, server.port)
        if key in have.services:
            before.services[key] = have.services[key]
    for key, vs in changed.items():
        _drop(have, key)
        _put(have, key, vs)
        _put(after, key, vs)
    # The sets change only where an address gained its first user or lost its last.
    for (remote, ip), present in was.items():
        now = have.refs.get((remote, ip), 0) > 0
        for layout, there in ((before, present), (after, now)):
            target = layout.remote if remote else layout.hairpin
            if there:
                target.add(ip)
            else:
                target.discard(ip)
    return plan(after, before, "")


def _elements(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _svc_key(key: VsKey) -> str:
    return f"{key[0]} . {key[1]} . {key[2]}"


def _backend_key(key: BackendKey) -> str:
    return f"{key[0]} . {key[1]} . {key[2]} . {key[3]}"


def plan(want: Layout, have: Layout, base: str) -> tuple[str, list[str]]:
    """The one transaction that turns have into want, and what it changes.
    base: the base script, applied when the marker differs."""
    lines: list[str] = []
    changes: list[str] = []
    if want.base != have.base:
        lines.append(base)
        if have.base:
            lines.append(f"delete chain {FAMILY_TABLE} {have.base}")
        changes.append("base rules")
    for name in sorted(want.chains - have.chains):
        lines.append(chain_script(name))
    # Changed values are deleted then added inside the same transaction, so
    # no packet sees the key missing.
    stale_backends = [k for k in have.backends if k not in want.backends or have.backends[k] != want.backends[k]]
    new_backends = [k for k, v in want.backends.items() if have.backends.get(k) != v]
    stale_services = [k for k in have.services if have.services[k] != want.services.get(k)]
    new_services = [k for k, v in want.services.items() if have.services.get(k) != v]
    if stale_services:
        lines.append(f"delete element {FAMILY_TABLE} services {_elements([_svc_key(k) for k in stale_services])}")
    if stale_backends:
        lines.append(f"delete element {FAMILY_TABLE} backends {_elements([_backend_key(k) for k in stale_backends])}")
    if new_backends:
        items = [f"{_backend_key(k)} : {want.backends[k][0]} . {want.backends[k][1]}" for k in new_backends]
        lines.append(f"add element {FAMILY_TABLE} backends {_elements(items)}")
    if new_services:
        items = [f"{_svc_key(k)} : goto {want.services[k]}" for k in new_services]
        lines.append(f"add element {FAMILY_TABLE} services {_elements(items)}")
    for set_name, wanted, present in (("hairpin", want.hairpin, have.hairpin), ("remote", want.remote, have.remote)):
        fmt = (lambda ip: f"{ip} . {ip}") if set_name == "hairpin" else (lambda ip: ip)
        if present - wanted:
            gone = [fmt(ip) for ip in sorted(present - wanted)]
            lines.append(f"delete element {FAMILY_TABLE} {set_name} {_elements(gone)}")
        if wanted - present:
            added = [fmt(ip) for ip in sorted(wanted - present)]
            lines.append(f"add element {FAMILY_TABLE} {set_name} {_elements(added)}")
    for key in sorted(set(new_services) | {k for k in stale_services if k not in want.services}):
        verb = "-" if key not in want.services else "~" if key in have.services else "+"
        changes.append(f"{verb}{key[0]}:{key[2]}/{key[1]}")
    for key in sorted({k[:3] for k in (*new_backends, *stale_backends)} - set(new_services) - set(stale_services)):
        changes.append(f"~{key[0]}:{key[2]}/{key[1]}")
    return "\n".join(lines) + ("\n" if lines else ""), changes


def unused_chains(want: Layout, have: Layout) -> list[str]:
    """Shared chains no service points at any more (dropped at full syncs,
    after the elements that pointed at them)."""
    return sorted(c for c in have.chains - want.chains if is_lb_chain(c))
