"""What both backends need in a tenant router before they program it:
bridged replies seen by conntrack, and the addresses it must treat as its
own."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from pyroute2 import NetlinkError

from pinet.hostnet.netns import open_netlink, write_sysctl

RTN_LOCAL = 2
RT_SCOPE_HOST = 254
RT_TABLE_LOCAL = 255
# Marks the lb's local routes as its own (see netagent's PEER_ROUTE_PROTO).
LB_ROUTE_PROTO = 0x71


def prepare(netns: str, local_cidrs: set[str]) -> list[str]:
    """Replies from a pod to a pod on the same bridge never reach the IP
    layer unless the bridge hands them to netfilter; without that, conntrack
    could not undo the DNAT of a service on the way back. local_cidrs: the
    service range (a VIP without endpoints then refuses at once instead of
    being ARPed for) and, for IPVS, the floating IPs it serves."""
    changes = []
    write_sysctl(netns, "net.bridge.bridge-nf-call-iptables", "1")
    sock = open_netlink(netns)
    try:
        changes += _sync_local_routes(sock, netns, local_cidrs)
    finally:
        sock.close()
    return changes


def _sync_local_routes(sock: Any, netns: str, wanted: set[str]) -> list[str]:
    changes = []
    lo = sock.link_lookup(ifname="lo")[0]
    have = {
        f"{rt.get_attr('RTA_DST')}/{rt['dst_len']}"
        for rt in sock.get_routes(family=2, table=RT_TABLE_LOCAL)
        if rt["proto"] == LB_ROUTE_PROTO
    }
    wanted = {str(ipaddress.IPv4Network(c)) for c in wanted}
    for cidr in sorted(wanted - have):
        sock.route(
            "replace", dst=cidr, table=RT_TABLE_LOCAL, type=RTN_LOCAL, scope=RT_SCOPE_HOST, oif=lo,
            proto=LB_ROUTE_PROTO,
        )  # fmt: skip
        changes.append(f"{netns}: local {cidr}")
    for cidr in sorted(have - wanted):
        with contextlib.suppress(NetlinkError):
            sock.route("del", dst=cidr, table=RT_TABLE_LOCAL, type=RTN_LOCAL, oif=lo, proto=LB_ROUTE_PROTO)
        changes.append(f"{netns}: local -{cidr}")
    return changes
