"""The host namespace's share: node ports and the floating IPs this host
answers for.

Node ports arrive on the underlay address and are DNATed to the tenant
router's transit address (the router then balances them like any virtual
service), or, where the tenant has no router here, on to a host that has its
endpoints (masqueraded, so the reply comes back through here). A floating IP
is routed to the router unchanged, and this host answers ARP for it on the
underlay (a proxy neighbour entry), so the router sees the address the
client used.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import NetlinkError

from pinet.hostnet import names
from pinet.hostnet.command import run
from pinet.hostnet.netns import entered, open_netlink
from pinet.hostnet.nft import BaseRules, Nft, base_rules, element_key, is_base_marker
from services.lb.model import HostLb

TABLE = names.LB_TABLE
FIP_ROUTE_PROTO = 0x72


@dataclass
class HostLayout:
    base: str = ""
    chains: set[str] = field(default_factory=set)
    nodeports: dict[tuple[str, int], str] = field(default_factory=dict)  # -> chain
    local: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    remote: dict[tuple[str, int, int], tuple[str, int]] = field(default_factory=dict)


def base_script(underlay_ip: str) -> BaseRules:
    return base_rules(
        [
            f"add table {TABLE}",
            f"add map {TABLE} nodeports {{ type inet_proto . inet_service : verdict; }}",
            f"add map {TABLE} local {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}",
            f"add map {TABLE} remote {{ type inet_proto . inet_service . mark : ipv4_addr . inet_service; }}",
            f"add chain {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
            f"add chain {TABLE} output {{ type nat hook output priority -100; policy accept; }}",
            f"add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
            f"add chain {TABLE} to-router",
            f"flush chain {TABLE} prerouting",
            f"flush chain {TABLE} output",
            f"flush chain {TABLE} postrouting",
            f"flush chain {TABLE} to-router",
            f"add rule {TABLE} prerouting ip daddr {underlay_ip} meta l4proto . th dport vmap @nodeports",
            f"add rule {TABLE} output ip daddr {underlay_ip} meta l4proto . th dport vmap @nodeports",
            # Sent on to another host: masquerade so that the reply returns here.
            f'add rule {TABLE} postrouting ct status dnat ct original ip daddr {underlay_ip} oifname != "pr*" '
            "masquerade",
            f"add rule {TABLE} to-router meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . th dport map @local",
        ],
        TABLE,
    )


def forward_chain(n: int) -> str:
    return "\n".join(
        [
            f"add chain {TABLE} fwd-{n}",
            f"flush chain {TABLE} fwd-{n}",
            f"add rule {TABLE} fwd-{n} meta mark set numgen inc mod {n} offset 1",
            f"add rule {TABLE} fwd-{n} meta l4proto {{ tcp, udp }} "
            "dnat ip to meta l4proto . th dport . meta mark map @remote",
        ]
    )


def layout(h: HostLb, marker: str) -> HostLayout:
    want = HostLayout(base=marker)
    for key, target in h.node_ports.items():
        if target.local:
            want.nodeports[key] = "to-router"
            want.local[key] = (target.local, target.port)
        elif target.remote:
            chain = f"fwd-{len(target.remote)}"
            want.chains.add(chain)
            want.nodeports[key] = chain
            for slot, ip in enumerate(target.remote, start=1):
                want.remote[(*key, slot)] = (ip, target.port)
    return want


def _diff(name: str, want: dict[Any, Any], have: dict[Any, Any], value: Any) -> list[str]:
    def k(key: Any) -> str:
        return " . ".join(str(x) for x in key)

    lines = []
    stale = [key for key in have if want.get(key) != have[key]]
    new = [key for key in want if have.get(key) != want[key]]
    if stale:
        lines.append(f"delete element {TABLE} {name} {{ {', '.join(k(x) for x in stale)} }}")
    if new:
        lines.append(f"add element {TABLE} {name} {{ {', '.join(f'{k(x)} : {value(want[x])}' for x in new)} }}")
    return lines


def plan(want: HostLayout, have: HostLayout, base: str) -> str:
    lines = []
    if want.base != have.base:
        lines.append(base)
        if have.base:
            lines.append(f"delete chain {TABLE} {have.base}")
    lines += [forward_chain(int(c.split("-")[1])) for c in sorted(want.chains - have.chains)]
    # Maps the verdicts lead to first, the verdicts last (and the reverse
    # for removals, which _diff puts first).
    lines += _diff("local", want.local, have.local, lambda v: f"{v[0]} . {v[1]}")
    lines += _diff("remote", want.remote, have.remote, lambda v: f"{v[0]} . {v[1]}")
    lines += _diff("nodeports", want.nodeports, have.nodeports, lambda v: f"goto {v}")
    return "\n".join(lines) + ("\n" if lines else "")


def read_layout(nft: Nft) -> HostLayout:
    have = HostLayout()
    for obj in nft.list_json(f"table {TABLE}"):
        if "chain" in obj:
            name = obj["chain"]["name"]
            if is_base_marker(name):
                have.base = name
            elif name.startswith("fwd-"):
                have.chains.add(name)
        elif "map" in obj:
            m = obj["map"]
            for key, value in m.get("elem", []):
                k = element_key(key)
                if m["name"] == "nodeports":
                    have.nodeports[(k[0], int(k[1]))] = value.get("goto", {}).get("target", "")
                elif m["name"] == "local":
                    ip, port = element_key(value)
                    have.local[(k[0], int(k[1]))] = (ip, int(port))
                elif m["name"] == "remote":
                    ip, port = element_key(value)
                    slot = int(k[2], 0) if isinstance(k[2], str) else int(k[2])
                    have.remote[(k[0], int(k[1]), slot)] = (ip, int(port))
    return have


def announce(netns: str, dev: str, address: str) -> None:
    """Gratuitous ARP for address from dev: neighbours that cached another
    host's MAC for it (the address moved here) update their entry at once."""
    with entered(netns), socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((dev, 0))
        mac = sock.getsockname()[4]
        ip = socket.inet_aton(address)
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip
        frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp
        for _ in range(2):
            sock.send(frame)


class HostForwarding:
    def __init__(self, host_netns: str) -> None:
        self.host_netns = host_netns
        self._nft: Nft | None = None
        self._have: HostLayout | None = None

    def sync(self, h: HostLb, full: bool) -> list[str]:
        if not h.underlay_ip:
            return []
        if self._nft is None:
            self._nft = Nft(self.host_netns)
        changes: list[str] = []
        have = self._have
        if full or have is None:
            have = read_layout(self._nft)
        if not h.node_ports and not h.fips:
            # Nothing to forward: the table goes, until something needs it.
            if have.base:
                self._nft.run(f"delete table {TABLE}")
                changes.append("host: table removed (nothing to forward)")
            self._have = HostLayout()
            return changes + self._sync_fips(h)
        base = base_script(h.underlay_ip)
        want = layout(h, base.marker)
        script = plan(want, have, base.script)
        try:
            self._nft.run(script)
        except Exception:
            self._have = None
            raise
        if script:
            changes.append(f"host: node ports {sorted(want.nodeports)}")
        self._have = want
        changes += self._sync_fips(h)
        return changes

    def _sync_fips(self, h: HostLb) -> list[str]:
        changes = []
        sock = open_netlink(self.host_netns)
        try:
            found = sock.get_addr(family=2, address=h.underlay_ip)
            if not found:
                return []
            dev = sock.get_links(found[0]["index"])[0].get_attr("IFLA_IFNAME")
            have = {
                rt.get_attr("RTA_DST"): rt.get_attr("RTA_GATEWAY")
                for rt in sock.get_routes(family=2, table=254)
                if rt["proto"] == FIP_ROUTE_PROTO
            }
            proxies = self._proxies(dev)
            for fip, gateway in sorted(h.fips.items()):
                if have.get(fip) != gateway:
                    sock.route("replace", dst=f"{fip}/32", gateway=gateway, proto=FIP_ROUTE_PROTO)
                    changes.append(f"host: {fip} -> {gateway}")
                if fip not in proxies:
                    self._ip("neigh", "replace", "proxy", fip, "dev", dev)
                    # Neighbours still send to the host that answered before.
                    announce(self.host_netns, dev, fip)
            # Stop answering ARP before the route goes, so that nothing is
            # drawn here that cannot be delivered.
            for fip in sorted(set(have) - set(h.fips)):
                if fip in proxies:
                    self._ip("neigh", "del", "proxy", fip, "dev", dev)
                with contextlib.suppress(NetlinkError):
                    sock.route("del", dst=f"{fip}/32", proto=FIP_ROUTE_PROTO)
                changes.append(f"host: {fip} released")
        finally:
            sock.close()
        return changes

    def _ip(self, *args: str) -> str:
        prefix = ["ip", "-n", self.host_netns] if self.host_netns else ["ip"]
        return run([*prefix, *args]).stdout

    def _proxies(self, dev: str) -> set[str]:
        out = self._ip("-j", "neigh", "show", "proxy", "dev", dev)
        entries = json.loads(out) if out.strip() else []
        return {e["dst"] for e in entries if ipaddress.ip_address(e["dst"]).version == 4}

    def close(self) -> None:
        if self._nft is not None:
            self._nft.close()
            self._nft = None
