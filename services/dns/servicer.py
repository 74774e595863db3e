"""The pinet.dns.v1.DnsService servicer: a lookup answered exactly as a
query on the wire would be, and what the view holds per tenant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from dnslib import QTYPE, RCODE, DNSRecord

from pinet.api.dns.v1 import dns_pb2, dns_pb2_grpc
from pinet.runtime.errors import invalid
from pinet.runtime.servicer import unary
from services.dns.handler import handle

if TYPE_CHECKING:
    from services.dns.app import DnsApp


class DnsServicer(dns_pb2_grpc.DnsServiceServicer):
    def __init__(self, app: DnsApp) -> None:
        self.app = app

    @unary
    async def Lookup(self, request: dns_pb2.LookupRequest, context: grpc.aio.ServicerContext) -> dns_pb2.LookupResponse:  # type: ignore[type-arg]
        qtype = request.type or "A"
        if not request.name or qtype not in QTYPE.reverse:
            raise invalid("name and a record type (A, AAAA, SRV, PTR, TXT, ...) are required")
        query = DNSRecord.question(request.name, qtype).pack()
        reply = handle(query, self.app.view.tenant(request.tenant), self.app.config, self.app.serial(), True)
        resp = dns_pb2.LookupResponse()
        if reply.data is None or reply.forward:
            resp.rcode = "REFUSED"
            return resp
        parsed = DNSRecord.parse(reply.data)
        resp.rcode = RCODE.get(parsed.header.rcode)
        for section, rrs in ((resp.answer, parsed.rr), (resp.authority, parsed.auth), (resp.additional, parsed.ar)):
            for rr in rrs:
                section.append(
                    dns_pb2.ResourceRecord(name=str(rr.rname), type=QTYPE.get(rr.rtype), ttl=rr.ttl, data=str(rr.rdata))
                )
        return resp

    @unary
    async def GetStatus(
        self,
        request: dns_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> dns_pb2.GetStatusResponse:
        app = self.app
        resp = dns_pb2.GetStatusResponse(zone=app.config.zone, revision=app.serial(), queries_total=app.server.queries)
        for name, view in sorted(app.view.tenants.items()):
            listeners = [f"{ln.address[0]}:{ln.address[1]}" for ln in app.server.listeners if ln.tenant == name]
            resp.tenants.append(
                dns_pb2.TenantView(
                    tenant=name, services=len(view.services), pods=sum(len(v) for v in view.pod_ips.values()),
                    listeners=listeners,
                )
            )  # fmt: skip
        return resp
