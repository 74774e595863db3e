"""An asyncio DNS server of pinet's own over UDP and TCP: every listener
answers for one tenant from the shared view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import RCODE
from prometheus_client import Counter

from services.dns.answer import Config
from services.dns.handler import Reply, chase_query, error_reply, handle, merge_chased
from services.dns.view import View

log = logging.getLogger(__name__)

QUERIES = Counter("pinet_dns_queries_total", "DNS queries answered.", ["transport"])
# Bound once: a labelled lookup per query would cost more than a cached answer.
UDP_QUERIES = QUERIES.labels("udp")
TCP_QUERIES = QUERIES.labels("tcp")
TCP_IDLE = 10.0
CACHE_SIZE = 200_000


@dataclass
class Listener:
    tenant: str
    address: tuple[str, int]
    transport: asyncio.DatagramTransport
    tcp: asyncio.Server
    closed: bool = field(default=False)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
            self.tcp.close()
            await self.tcp.wait_closed()


class DnsServer:
    def __init__(
        self, view: View, config: Config, serial: Callable[[], int], upstream: str = "",
        dns_ip: Callable[[str], str] = lambda tenant: "",
    ) -> None:  # fmt: skip
        self.view = view
        self.config = config
        self.serial = serial
        self.upstream = upstream
        self.dns_ip = dns_ip
        self.listeners: list[Listener] = []
        self.relaying: set[asyncio.Future[None]] = set()
        self._cache: dict[tuple[str, bool, bytes], bytes] = {}
        self._cache_version = -1
        self.queries = 0

    def answer(self, data: bytes, tenant: str, tcp: bool) -> Reply:
        """The reply, or what to ask the upstream. Whole replies are cached
        by the query's bytes after its ID (so the question's spelling and
        EDNS options are part of the key) until the view changes."""
        self.queries += 1
        if self._cache_version != self.view.version or len(self._cache) > CACHE_SIZE:
            self._cache.clear()
            self._cache_version = self.view.version
        key = (tenant, tcp, data[2:])
        cached = self._cache.get(key)
        if cached is not None:
            return Reply(data[:2] + cached)
        reply = handle(
            data, self.view.tenant(tenant), self.config, self.serial(), tcp, self.dns_ip(tenant), bool(self.upstream)
        )
        if reply.data is not None and not reply.forward and not reply.chase and len(data) >= 12:
            self._cache[key] = reply.data[2:]
        return reply

    async def complete(self, data: bytes, reply: Reply, tcp: bool) -> bytes | None:
        """The bytes to send for a reply that needs the upstream."""
        if reply.forward:
            return await self.forward(data)
        if reply.chase and reply.data is not None:
            chased = await self.forward(chase_query(reply.data, reply.chase))
            return merge_chased(data, reply.data, chased, tcp)
        return reply.data

    async def forward(self, data: bytes) -> bytes:
        host, _, port = self.upstream.rpartition(":")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        class Once(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, addr: tuple[str, int]) -> None:
                if not done.done():
                    done.set_result(reply)

        transport, _ = await loop.create_datagram_endpoint(Once, remote_addr=(host, int(port)))
        try:
            transport.sendto(data)
            return await asyncio.wait_for(done, 2.0)
        except TimeoutError:
            return error_reply(data, RCODE.SERVFAIL).data or b""
        finally:
            transport.close()

    async def listen(
        self, tenant: str, host: str, port: int, sockets: tuple[socket.socket, socket.socket] | None = None
    ) -> Listener:
        """Serve tenant on host:port; sockets, when given, were made by the
        caller (for example inside a tenant's router namespace)."""
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            async def relay(self, data: bytes, reply: Reply, addr: tuple[str, int]) -> None:
                out = await server.complete(data, reply, tcp=False)
                if out:
                    self.transport.sendto(out, addr)  # type: ignore[attr-defined]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                UDP_QUERIES.inc()
                reply = server.answer(data, tenant, tcp=False)
                if reply.forward or reply.chase:
                    task = asyncio.ensure_future(self.relay(data, reply, addr))
                    server.relaying.add(task)
                    task.add_done_callback(server.relaying.discard)
                elif reply.data is not None:
                    self.transport.sendto(reply.data, addr)  # type: ignore[attr-defined]

        async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                    data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE)
                    TCP_QUERIES.inc()
                    out = await server.complete(data, server.answer(data, tenant, tcp=True), tcp=True)
                    if out is None:
                        break
                    writer.write(struct.pack("!H", len(out)) + out)
                    await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        if sockets is None:
            transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
            # TCP on the same port as UDP (which may have been chosen for us).
            port = transport.get_extra_info("sockname")[1]
            tcp = await asyncio.start_server(tcp_client, host, port, reuse_address=True)
        else:
            transport, _ = await loop.create_datagram_endpoint(Udp, sock=sockets[0])
            tcp = await asyncio.start_server(tcp_client, sock=sockets[1])
        bound = transport.get_extra_info("sockname")
        listener = Listener(tenant, (bound[0], bound[1]), transport, tcp)  # type: ignore[arg-type]
        self.listeners.append(listener)
        log.info("answering for tenant %s on %s:%d (udp and tcp)", tenant, bound[0], bound[1])
        return listener

    async def close(self) -> None:
        for listener in self.listeners:
            await listener.close()
