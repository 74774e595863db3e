"""From query bytes to reply bytes (pure logic): header checks, EDNS0,
negative answers with the SOA, truncation for UDP."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from pinet.services.dns.answer import Config, in_zone, lookup, matching, soa
from pinet.services.dns.view import TenantView

MIN_UDP = 512
OUR_UDP = 1232  # the DNS flag day's safe size, advertised in our OPT


@dataclass(frozen=True)
class Reply:
    data: bytes | None  # None: nothing to send (not even a header to answer)
    forward: bool = False  # outside the zone: hand the query to the upstream


def error_reply(data: bytes, rcode: int) -> Reply:
    """A header-only reply for a query we could not parse."""
    if len(data) < 12:
        return Reply(None)
    ident, flags = struct.unpack("!HH", data[:4])
    opcode = flags & 0x7800
    rd = flags & 0x0100
    return Reply(struct.pack("!HHHHHH", ident, 0x8000 | opcode | rd | rcode, 0, 0, 0, 0))


def handle(
    data: bytes,
    view: TenantView | None,
    config: Config,
    serial: int,
    tcp: bool,
    dns_ip: str = "",
    can_forward: bool = False,
) -> Reply:
    try:
        request = DNSRecord.parse(data)
    except Exception:
        return error_reply(data, RCODE.FORMERR)
    if request.header.qr:
        return Reply(None)  # a response sent to us: never answer those
    if request.header.opcode != 0:
        return error_reply(data, RCODE.NOTIMP)
    if len(request.questions) != 1:
        return error_reply(data, RCODE.FORMERR)
    q = request.q
    labels = tuple(part.decode(errors="replace").lower() for part in q.qname.label)
    if not in_zone(labels, config):
        if can_forward:
            return Reply(None, forward=True)
        reply = request.reply(ra=0, aa=0)
        reply.header.rcode = RCODE.REFUSED
        return Reply(reply.pack())
    reply = request.reply(ra=1 if can_forward else 0, aa=1)
    opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
    limit = max(MIN_UDP, opt.rclass if opt is not None else MIN_UDP)
    result = lookup(q.qname, q.qtype, view, config, dns_ip, serial)
    if not result.exists:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(soa(config, serial))
    else:
        answers = matching(result.answers, q.qtype)
        if answers:
            for rr in answers:
                reply.add_answer(rr)
            if any(rr.rtype == QTYPE.SRV for rr in answers):
                for rr in result.additional:
                    reply.add_ar(rr)
        else:
            reply.add_auth(soa(config, serial))
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=OUR_UDP))
    packed = reply.pack()
    if not tcp and len(packed) > limit:
        reply.rr, reply.auth = [], []
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        reply.header.tc = 1
        packed = reply.pack()
    return Reply(packed)
