"""Follow tenant router namespaces on the hosts this dns process serves and
keep one DNS listener in each, on the tenant's DNS address (10.244.0.2:53)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

from pinet.hostnet import names
from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import NETNS_RUN, entered
from services.dns.server import DnsServer, Listener

log = logging.getLogger(__name__)


def sockets_in_netns(netns: str, address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to address:port inside netns. The calling
    thread enters the namespace only while it creates them."""
    with entered(netns):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((address, port))
            tcp.bind((address, port))
            tcp.listen(128)
            udp.setblocking(False)
            tcp.setblocking(False)
        except OSError:
            udp.close()
            tcp.close()
            raise
        return udp, tcp


class RouterListeners:
    """hosts: the node names served; tenant_of: VNI -> (tenant, DNS address)."""

    def __init__(
        self, server: DnsServer, hosts: list[str], tenant_of: Callable[[int], tuple[str, str] | None],
        port: int = 53, interval: float = 0.5,
    ) -> None:  # fmt: skip
        self.server = server
        self.hosts = hosts
        self.tenant_of = tenant_of
        self.port = port
        self.interval = interval
        self.listeners: dict[str, Listener] = {}

    def _routers(self) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            present = os.listdir(NETNS_RUN)
        except FileNotFoundError:
            return found
        for host in self.hosts:
            for name in present:
                vni = names.router_vni(host, name)
                if vni is not None:
                    found[name] = vni
        return found

    async def sync(self) -> None:
        routers = self._routers()
        for netns in list(self.listeners):
            if netns not in routers:
                await self.listeners.pop(netns).close()
                log.info("router %s is gone: stopped answering there", netns)
        for netns, vni in routers.items():
            if netns in self.listeners:
                continue
            tenant = self.tenant_of(vni)
            if tenant is None:
                continue
            name, address = tenant
            try:
                socks = await asyncio.to_thread(sockets_in_netns, netns, address, self.port)
            except (OSError, KernelError) as exc:
                # The agent may not have put the DNS address on the bridge yet.
                log.debug("cannot listen in %s yet: %s", netns, exc)
                continue
            self.listeners[netns] = await self.server.listen(name, address, self.port, socks)

    async def run(self) -> None:
        try:
            while True:
                await self.sync()
                await asyncio.sleep(self.interval)
        finally:
            for listener in self.listeners.values():
                with contextlib.suppress(Exception):
                    await listener.close()
