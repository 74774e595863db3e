"""From query bytes to reply bytes (pure logic): header checks, EDNS0,
negative answers with the SOA, truncation for UDP, the flags (AA; RD and
CD copied; RA when there is an upstream; AD never: pinet validates no
DNSSEC, RFC 4035 §3.2.3), and CNAMEs that leave the zone handed on."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSRecord

from services.dns.answer import Config, in_zone, resolve
from services.dns.view import TenantView

MIN_UDP = 512
OUR_UDP = 1232  # the DNS flag day's safe size, advertised in our OPT


@dataclass(frozen=True)
class Reply:
    data: bytes | None  # None: nothing to send (not even a header to answer)
    forward: bool = False  # outside the zone: hand the query to the upstream
    #: An in-zone CNAME chain ending outside the zone: ask the upstream for
    #: this name and complete data with merge_chased.
    chase: str = ""


def udp_limit(request: DNSRecord) -> int:
    """The largest UDP reply the asker takes (its EDNS0 size, at least 512)."""
    opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
    return max(MIN_UDP, opt.rclass if opt is not None else MIN_UDP)


def error_reply(data: bytes, rcode: int) -> Reply:
    """A header-only reply for a query we could not parse."""
    if len(data) < 12:
        return Reply(None)
    ident, flags = struct.unpack("!HH", data[:4])
    kept = flags & (0x7800 | 0x0100 | 0x0010)  # opcode, RD, CD
    return Reply(struct.pack("!HHHHHH", ident, 0x8000 | kept | rcode, 0, 0, 0, 0))


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
        reply.header.ad = 0
        reply.header.rcode = RCODE.REFUSED
        return Reply(bytes(reply.pack()))
    reply = request.reply(ra=1 if can_forward else 0, aa=1)
    reply.header.ad = 0
    opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
    limit = udp_limit(request)
    answer = resolve(q.qname, q.qtype, view, config, dns_ip, serial)
    reply.header.rcode = answer.rcode
    for rr in answer.answers:
        reply.add_answer(rr)
    for rr in answer.authority:
        reply.add_auth(rr)
    for rr in answer.additional:
        reply.add_ar(rr)
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=OUR_UDP))
    packed = bytes(reply.pack())
    if not tcp and len(packed) > limit:
        reply.rr, reply.auth = [], []
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        reply.header.tc = 1
        packed = bytes(reply.pack())
    return Reply(packed, chase=answer.outside if can_forward and not reply.header.tc else "")


def chase_query(reply: bytes, name: str) -> bytes:
    """What to ask the upstream for the outside end of a CNAME chain: the
    same type and flags, for the chain's last target."""
    ours = DNSRecord.parse(reply)
    query = DNSRecord.question(name, QTYPE.get(ours.q.qtype))
    query.header.id = ours.header.id
    query.header.rd = 1
    return bytes(query.pack())


def merge_chased(query: bytes, reply: bytes, upstream: bytes | None, tcp: bool) -> bytes:
    """Our chain, then what the upstream answered for its target: the
    answer carries both, with the upstream's rcode (RFC 6604: the rcode of
    the last name) and its authority when it had no answer. Without an
    upstream answer, the chain alone (as with no upstream)."""
    if not upstream:
        return reply
    ours = DNSRecord.parse(reply)
    try:
        theirs = DNSRecord.parse(upstream)
    except Exception:
        return reply
    ours.header.rcode = theirs.header.rcode
    ours.header.aa = 0  # part of the answer is not ours
    extra: list[RR] = list(theirs.rr)
    for rr in extra:
        ours.add_answer(rr)
    if not extra:
        for rr in theirs.auth:
            ours.add_auth(rr)
    packed = bytes(ours.pack())
    if not tcp and len(packed) > udp_limit(DNSRecord.parse(query)):
        ours.rr, ours.auth = [], []
        ours.header.tc = 1
        packed = bytes(ours.pack())
    return packed
