"""Names outside the zone go to the configured upstream resolver."""

from __future__ import annotations

import asyncio
import uuid

import dns.message
import dns.query
import dns.rcode
from dnslib import QTYPE, RR, A, DNSRecord

from pinet.api.network.v1 import objects_pb2
from pinet.devstack.etcd import EtcdServer, free_port
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import SERVICES
from tests.helpers.procs import ServiceProcess


class Upstream(asyncio.DatagramProtocol):
    """A stand-in resolver on loopback: every A query is 192.0.2.99."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.seen: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = DNSRecord.parse(data)
        self.seen.append(str(query.q.qname))
        reply = query.reply()
        if query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.99"), ttl=60))
        self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]


async def test_outside_names_are_forwarded(etcd_server: EtcdServer) -> None:
    loop = asyncio.get_running_loop()
    transport, upstream = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    port = free_port()
    proc = await ServiceProcess(
        "dns", etcd_server.endpoint,
        ["--dns-listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"],
    ).start()  # fmt: skip
    try:
        for tcp in (False, True):
            query = dns.message.make_query("example.com", "A")
            send = dns.query.tcp if tcp else dns.query.udp
            reply = await asyncio.to_thread(send, query, "127.0.0.1", 3, port)
            assert dns.rcode.to_text(reply.rcode()) == "NOERROR"
            assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["192.0.2.99"]
        assert upstream.seen == ["example.com.", "example.com."]
        # The zone itself is never forwarded.
        reply = await asyncio.to_thread(
            dns.query.udp, dns.message.make_query("nothing.cluster.local", "A"), "127.0.0.1", 3, port
        )
        assert dns.rcode.to_text(reply.rcode()) == "NXDOMAIN" and len(upstream.seen) == 2
    finally:
        await proc.terminate()
        transport.close()


async def test_an_external_name_outside_the_zone_is_completed_by_the_upstream(
    etcd_server: EtcdServer, etcd: Etcd
) -> None:
    loop = asyncio.get_running_loop()
    transport, upstream = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    tenant = f"fwd{uuid.uuid4().hex[:6]}"
    svc = objects_pb2.Service()
    svc.metadata.tenant, svc.metadata.namespace, svc.metadata.name = tenant, "default", "out"
    svc.spec.type = objects_pb2.SERVICE_TYPE_EXTERNAL_NAME
    svc.spec.external_name = "example.com"
    await etcd.put(SERVICES.key(tenant, "default", "out"), SERVICES.encode(svc))
    port = free_port()
    proc = await ServiceProcess(
        "dns", etcd_server.endpoint,
        ["--dns-listen", f"127.0.0.1:{port}", "--dns-tenant", tenant,
         "--upstream", f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"],
    ).start()  # fmt: skip
    try:
        for tcp in (False, True):
            query = dns.message.make_query("out.default.svc.cluster.local", "A")
            send = dns.query.tcp if tcp else dns.query.udp
            reply = await asyncio.to_thread(send, query, "127.0.0.1", 3, port)
            assert dns.rcode.to_text(reply.rcode()) == "NOERROR"
            answers = sorted(f"{r.name} {rd.to_text()}" for r in reply.answer for rd in r)
            assert answers == ["example.com. 192.0.2.99", "out.default.svc.cluster.local. example.com."], answers
        assert upstream.seen == ["example.com.", "example.com."]
    finally:
        await proc.terminate()
        transport.close()
        await etcd.delete(SERVICES.key(tenant, "default", "out"))
