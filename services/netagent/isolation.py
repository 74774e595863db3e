"""What keeps a hostile tenant in its own network (pure logic): the
nftables tables of the host namespace and of every tenant router, and the
set elements that follow pods and hosts.

Three fences, each a handful of rules whose size does not depend on the
number of tenants or pods (what grows lives in set elements):

- the host (`ip pinet-host`): what comes out of a router uplink (`pr*`) may
  go to the internet and to floating IPs, and nowhere else: not to this
  host's own addresses (node ports included), not to another host's
  underlay address, not to link-local addresses, transit addresses, router
  identities or the operator's protected ranges. Replies to connections
  opened from outside pass. VXLAN is decapsulated only from (host, VNI)
  pairs where that host has a router for that VNI.
- the router's bridge (`bridge pinet`): a pod's port passes only frames
  with the pod's own MAC, IPv4 from the pod's own address and ARP that
  speaks for that address alone; no DHCP server replies, no ICMP redirects,
  nothing else (IPv6 router advertisements included).
- the router's IP layer (`ip pinet`): pods reach no transit address and no
  router identity except to answer connections made to them, and each pod
  has a limit of tracked connections through the router's uplink, so one
  cannot fill the host's connection tracking for everybody.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from pinet.hostnet import names
from pinet.hostnet.nft import base_rules, is_base_marker

HOST_TABLE = names.AGENT_HOST_TABLE
ROUTER_TABLE = names.AGENT_ROUTER_TABLE
BRIDGE_TABLE = names.AGENT_BRIDGE_TABLE
UPLINKS = "pr*"  # names.uplink_host_ifname
POD_PORTS = "pv*"  # names.pod_host_ifname
LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
# Never a destination for tenant traffic, whatever the operator configures.
ALWAYS_PROTECTED = (LINK_LOCAL, names.TRANSIT_NET, names.ROUTER_IDENTITY_NET)
# Counters, named so that their values can be read back and exported.
INFRA_DROPS = "infra-drops"
VXLAN_DROPS = "vxlan-drops"
SPOOF_DROPS = "spoof-drops"
CT_LIMIT_DROPS = "ct-limit-drops"
DEFAULT_CONNTRACK_LIMIT = 16384

Elements = dict[str, set[tuple[str, ...]]]  # "family table set" -> elements
Port = tuple[str, str, str]  # router-side interface, pod MAC, pod IP
Peer = tuple[str, int]  # remote underlay address, VNI


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Policy:
    """enabled=False drops every fence (only for measuring what they cost)."""

    enabled: bool = True
    protected: tuple[str, ...] = ()  # the operator's extra ranges, e.g. the control-plane network
    conntrack_limit: int = DEFAULT_CONNTRACK_LIMIT  # tracked connections per pod; 0: unlimited

    def blocked_ranges(self) -> list[str]:
        """Every protected range, merged (an interval set refuses overlaps)."""
        nets = [*ALWAYS_PROTECTED, *(ipaddress.IPv4Network(c) for c in self.protected)]
        return [str(n) for n in ipaddress.collapse_addresses(nets)]


def parse_protected(text: str) -> tuple[str, ...]:
    """--protected-cidrs: comma-separated IPv4 ranges."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError as exc:
            raise PolicyError(f"--protected-cidrs: {item!r} is not an IPv4 range ({exc})") from None
    return tuple(out)


@dataclass(frozen=True)
class Base:
    """The fixed part of one namespace's tables: the script that (re)makes
    it without touching set elements, and the name of the empty chain whose
    name carries its digest, so that an unchanged base is recognised."""

    tables: tuple[str, ...]
    script: str
    marker: str


def _base(tables: tuple[str, ...], body: list[str], marker_table: str) -> Base:
    rules = base_rules(body, marker_table)
    return Base(tables, rules.script, rules.marker)


def _chain(table: str, name: str, hook: str, priority: str) -> list[str]:
    return [
        f"add chain {table} {name} {{ type filter hook {hook} priority {priority}; policy accept; }}",
        f"flush chain {table} {name}",
    ]


def host_base(policy: Policy) -> Base:
    t = HOST_TABLE
    vxlan = f"udp dport {names.VXLAN_PORT}"
    body = [
        f"add table {t}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} postrouting",
        f'add rule {t} postrouting ip saddr {names.TRANSIT_NET} oifname != "{UPLINKS}" masquerade',
    ]
    checks = []
    if policy.enabled:
        body += [
            f"add set {t} hosts {{ type ipv4_addr; }}",
            f"add set {t} protected {{ type ipv4_addr; flags interval; }}",
            f"flush set {t} protected",
            f"add element {t} protected {{ {', '.join(policy.blocked_ranges())} }}",
            # Host and VNI of the VXLAN header (bits 32-55 after the UDP header).
            f"add set {t} vxlan-peers {{ typeof ip saddr . @th,96,24; }}",
            f"add counter {t} {INFRA_DROPS}",
            f"add counter {t} {VXLAN_DROPS}",
            f"add chain {t} from-routers",
            f"flush chain {t} from-routers",
            f"add rule {t} from-routers ct direction reply accept",
            f"add rule {t} from-routers fib daddr type {{ local, broadcast, multicast }} "
            f"counter name {INFRA_DROPS} drop",
            f"add rule {t} from-routers ip daddr @hosts counter name {INFRA_DROPS} drop",
            f"add rule {t} from-routers ip daddr @protected counter name {INFRA_DROPS} drop",
            f"add rule {t} from-routers accept",
            # Before the node ports' DNAT sees a packet.
            *_chain(t, "guard", "prerouting", "mangle"),
            f'add rule {t} guard iifname "{UPLINKS}" jump from-routers',
        ]
        # Before connection tracking, so a forged flood makes no entries.
        checks.append(
            f"add rule {t} vxlan {vxlan} ip saddr . @th,96,24 != @vxlan-peers counter name {VXLAN_DROPS} drop"
        )
    body += [
        # VXLAN between hosts needs no connection tracking (it is never
        # translated), and each inner flow would be an entry of its own.
        *_chain(t, "vxlan", "prerouting", "raw"),
        *checks,
        f"add rule {t} vxlan {vxlan} notrack",
        *_chain(t, "vxlan-out", "output", "raw"),
        f"add rule {t} vxlan-out {vxlan} notrack",
    ]
    return _base((t,), body, t)


def router_base(cidr: str, gateway: str, policy: Policy, uplink: str = names.ROUTER_UPLINK) -> Base:
    t, b = ROUTER_TABLE, BRIDGE_TABLE
    bridge, vxlan = names.ROUTER_BRIDGE, names.ROUTER_VXLAN
    special = f"{{ {names.TRANSIT_NET}, {names.ROUTER_IDENTITY_NET} }}"
    forward = [
        # Only a connection's first packet goes further.
        f"add rule {t} forward ct state established,related accept",
        # Nothing new from outside but what the load balancer translated.
        f'add rule {t} forward iifname "{uplink}" ct status dnat accept',
        f'add rule {t} forward iifname "{uplink}" drop',
    ]
    local = [
        f'add rule {t} input iifname "{uplink}" ct state established,related accept',
        f'add rule {t} input iifname "{uplink}" drop',
    ]
    platform = f"{gateway}-{ipaddress.IPv4Network(cidr).network_address + names.PLATFORM_RESERVED}"
    ports = [
        # Each host's pods use their own router: the platform's addresses
        # (gateway, DNS and the reserved ones) are not answered for across
        # the VXLAN.
        f'add rule {b} from-ports iifname "{vxlan}" arp operation request arp daddr ip {platform} drop',
    ]
    counters = []
    if policy.enabled:
        counters = [
            f"add counter {t} {INFRA_DROPS}",
            f"add counter {t} {CT_LIMIT_DROPS}",
            f"add counter {b} {SPOOF_DROPS}",
            f"add set {t} ct-pods {{ type ipv4_addr; size 65536; flags dynamic; }}",
            f"add set {b} macs {{ type ifname . ether_addr; }}",
            f"add set {b} ports {{ type ifname . ether_addr . ipv4_addr; }}",
        ]
        # In the chains the router has anyway (a packet pays for every base
        # chain it crosses), behind the established fast path. Replies to
        # traffic translated to a router identity are established; `ct
        # original` is the address the pod asked for, before any DNAT.
        forward.append(f"add rule {t} forward ct original ip daddr {special} counter name {INFRA_DROPS} drop")
        if policy.conntrack_limit:
            # What the tenants share on a host is the host namespace's
            # connection table (each namespace counts its own), and only
            # connections through the uplink reach it: VXLAN is not tracked
            # there, pod-to-pod traffic stays in the tenant's routers.
            forward.append(
                f'add rule {t} forward oifname "{uplink}" ip saddr {cidr} ct state new add @ct-pods '
                f"{{ ip saddr ct count over {policy.conntrack_limit} }} counter name {CT_LIMIT_DROPS} drop"
            )
        local.append(f'add rule {t} input iifname "{bridge}" ip daddr {special} counter name {INFRA_DROPS} drop')
        # TCP from a pod, most of what the bridge carries, in one rule.
        ports.insert(0, f'add rule {b} from-ports iifname "{POD_PORTS}" ip protocol tcp '
                        "iifname . ether saddr . ip saddr @ports accept")  # fmt: skip
        ports += [
            f'add rule {b} from-ports iifname != "{POD_PORTS}" accept',
            f"add rule {b} from-ports udp sport 67 counter name {SPOOF_DROPS} drop",
            f"add rule {b} from-ports icmp type redirect counter name {SPOOF_DROPS} drop",
            f"add rule {b} from-ports iifname . ether saddr . ip saddr @ports accept",
            f"add rule {b} from-ports ether type arp iifname . ether saddr != @macs counter name {SPOOF_DROPS} drop",
            f"add rule {b} from-ports iifname . arp saddr ether . arp saddr ip @ports accept",
            # IPv6 (router advertisements), other ethertypes, VLAN tags.
            f"add rule {b} from-ports counter name {SPOOF_DROPS} drop",
        ]
    body = [
        f"add table {t}",
        f"add table {b}",
        *counters,
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} postrouting",
        f'add rule {t} postrouting oifname "{uplink}" ip saddr {cidr} masquerade',
        *_chain(t, "forward", "forward", "filter"),
        *forward,
        *_chain(t, "input", "input", "filter"),
        *local,
        *_chain(b, "from-ports", "prerouting", "filter"),
        *ports,
    ]
    return _base((t, b), body, t)


# ------------------------------------------------------------- elements


@dataclass(frozen=True)
class HostSets:
    hosts: frozenset[str] = frozenset()
    peers: frozenset[Peer] = frozenset()


@dataclass(frozen=True)
class RouterSets:
    ports: frozenset[Port] = frozenset()


@dataclass
class Read:
    """What one namespace's tables hold, as read back from the kernel."""

    markers: list[str] = field(default_factory=list)
    tables: set[str] = field(default_factory=set)
    sets: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)  # "family table set" -> elements
    counters: dict[str, int] = field(default_factory=dict)  # "family table counter" -> packets


def parse(objects: Iterable[dict[str, object]]) -> Read:
    """`nft -j list table` output of one or more tables."""
    read = Read()
    for obj in objects:
        for kind, body in obj.items():
            if not isinstance(body, dict):
                continue
            where = f"{body.get('family')} {body.get('table')}"
            if kind == "table":
                read.tables.add(f"{body['family']} {body['name']}")
            elif kind == "chain" and is_base_marker(str(body.get("name", ""))):
                read.markers.append(str(body["name"]))
            elif kind == "set":
                read.sets[f"{where} {body['name']}"] = {_element(e) for e in body.get("elem", [])}  # type: ignore[attr-defined]
            elif kind == "counter":
                read.counters[f"{where} {body['name']}"] = int(body.get("packets", 0))  # type: ignore[call-overload]
    return read


def _element(value: object) -> tuple[str, ...]:
    if isinstance(value, dict):
        if "concat" in value:
            return tuple(str(v) for v in value["concat"])
        if "elem" in value:  # an element with options (timeouts, counters)
            return _element(value["elem"]["val"])
    return (str(value),)


def host_elements(hosts: HostSets) -> Elements:
    return {
        f"{HOST_TABLE} hosts": {(ip,) for ip in hosts.hosts},
        f"{HOST_TABLE} vxlan-peers": {(ip, str(vni)) for ip, vni in hosts.peers},
    }


def router_elements(sets: RouterSets) -> Elements:
    return {
        f"{BRIDGE_TABLE} macs": {(ifname, mac) for ifname, mac, _ in sets.ports},
        f"{BRIDGE_TABLE} ports": set(sets.ports),
    }


# Sets whose first field is an interface name, which nft takes as a string.
_NAMED_BY_INTERFACE = (f"{BRIDGE_TABLE} macs", f"{BRIDGE_TABLE} ports")


def element_script(verb: str, set_path: str, items: Iterable[tuple[str, ...]]) -> str:
    """`add element` / `delete element` for a set named "family table set"."""
    listed = sorted(items)
    if not listed:
        return ""
    quoted = set_path in _NAMED_BY_INTERFACE
    text = ", ".join(" . ".join(f'"{x}"' if quoted and i == 0 else x for i, x in enumerate(item)) for item in listed)
    return f"{verb} element {set_path} {{ {text} }}\n"


def diff_script(want: Elements, have: Elements) -> tuple[str, int]:
    """The transaction turning have's elements into want's, and how many
    elements it changes; sets missing from want are left alone."""
    lines = []
    count = 0
    for path, wanted in want.items():
        present = have.get(path, set())
        gone, new = present - wanted, wanted - present
        lines.append(element_script("delete", path, gone))
        lines.append(element_script("add", path, new))
        count += len(gone) + len(new)
    return "".join(lines), count
