"""Netlink sockets per namespace for the agent's kernel code, and reading
the attributes pyroute2 returns."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from pyroute2 import IPRoute

from pinet.hostnet.netns import open_netlink


class Netlink:
    """One kept netlink socket per namespace ("" = the host's)."""

    def __init__(self, host_netns: str) -> None:
        self.host_netns = host_netns
        self._sockets: dict[str, Any] = {}

    def ns(self, name: str) -> Any:
        """A netlink socket inside namespace name ("" = the host namespace)."""
        key = name or self.host_netns or "<root>"
        sock = self._sockets.get(key)
        if sock is None:
            target = name or self.host_netns
            sock = open_netlink(target) if target else IPRoute()
            self._sockets[key] = sock
        return sock

    def drop(self, name: str) -> None:
        sock = self._sockets.pop(name, None)
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()

    def close(self) -> None:
        for name in list(self._sockets):
            self.drop(name)


def link_named(ns: Any, ifname: str) -> Any:
    found = ns.link_lookup(ifname=ifname)
    return ns.get_links(found[0])[0] if found else None


def attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def has_route(routes: list[Any], cidr: str, gateway: str) -> bool:
    network = ipaddress.IPv4Network(cidr)
    return any(
        rt["dst_len"] == network.prefixlen
        and attr(rt, "RTA_DST") == str(network.network_address)
        and attr(rt, "RTA_GATEWAY") == gateway
        for rt in routes
    )


def hairpin(link: Any) -> bool:
    info = attr(link, "IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    return bool(data is not None and data.get_attr("IFLA_BRPORT_MODE"))
