"""The answer logic in-process, against the Kubernetes DNS specification
(schema 1.1.0) and the RFCs it rests on: a hand-built view, a query in,
the reply checked section by section and flag by flag."""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from services.dns.answer import Config
from services.dns.handler import chase_query, handle, merge_chased
from services.dns.view import Endpoint, Port, Service, TenantView

Z = "cluster.local"
CONFIG = Config()
HTTP = (Port("http", "tcp", 80),)


def view() -> TenantView:
    v = TenantView()
    services = [
        Service("default", "kubernetes", "10.244.250.1", "", HTTP),
        Service("default", "foo-local", "", f"kubernetes.default.svc.{Z}", ()),
        Service("default", "hop", "", f"foo-local.default.svc.{Z}", ()),
        Service("default", "to-nowhere", "", f"missing.default.svc.{Z}", ()),
        Service("default", "to-headless-empty", "", f"empty.default.svc.{Z}", ()),
        Service("default", "loop-a", "", f"loop-b.default.svc.{Z}", ()),
        Service("default", "loop-b", "", f"loop-a.default.svc.{Z}", ()),
        Service("default", "self", "", f"self.default.svc.{Z}", ()),
        Service("default", "outside", "", "example.org", ()),
        Service("default", "empty", "", "", HTTP),
        Service("default", "one", "", "", HTTP),
        Service("default", "many", "", "", HTTP),
    ]
    for s in services:
        v.services[(s.namespace, s.name)] = s
        v.namespaces.add(s.namespace)
    v.endpoints[("default", "empty")] = ()
    v.endpoints[("default", "one")] = (Endpoint("10.244.0.20", "", True, HTTP),)
    v.endpoints[("default", "many")] = (
        Endpoint("10.244.0.30", "db-0", True, HTTP),
        Endpoint("10.244.0.31", "", True, HTTP),
        Endpoint("10.244.0.32", "db-2", False, HTTP),  # published not ready
    )
    v.pod_ips["10.244.0.20"].add("default")
    return v


def ask(name: str, qtype: str, *, upstream: bool = False, flags: int = dns.flags.RD) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    query.flags = flags
    reply = handle(query.to_wire(), view(), CONFIG, 42, tcp=True, dns_ip="10.244.0.2", can_forward=upstream)
    assert reply.data is not None
    return dns.message.from_wire(reply.data)


def section(msg: dns.message.Message, which: str) -> list[str]:
    """'name TYPE data' lines of a section, sorted."""
    rrsets = getattr(msg, which)
    return sorted(f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {rd}" for r in rrsets for rd in r)


@dataclass
class Case:
    name: str
    qtype: str
    rcode: str = "NOERROR"
    answer: list[str] = field(default_factory=list)
    #: The owner of the SOA in authority ("" : none).
    soa: str = ""


def chain(*links: tuple[str, str]) -> list[str]:
    return [f"{a}.default.svc.{Z}. CNAME {b}." for a, b in links]


CASES = [
    # ExternalName inside the zone: the chain and the target's records (RFC 1034 §4.3.2).
    Case(f"foo-local.default.svc.{Z}", "A",
         answer=[*chain(("foo-local", f"kubernetes.default.svc.{Z}")),
                 f"kubernetes.default.svc.{Z}. A 10.244.250.1"]),
    Case(f"hop.default.svc.{Z}", "A",
         answer=[*chain(("hop", f"foo-local.default.svc.{Z}"), ("foo-local", f"kubernetes.default.svc.{Z}")),
                 f"kubernetes.default.svc.{Z}. A 10.244.250.1"]),
    Case(f"foo-local.default.svc.{Z}", "CNAME", answer=chain(("foo-local", f"kubernetes.default.svc.{Z}"))),
    # The target has no record of the type: the chain, NODATA for the last name.
    Case(f"foo-local.default.svc.{Z}", "AAAA", answer=chain(("foo-local", f"kubernetes.default.svc.{Z}")),
         soa=f"{Z}."),
    # A target that does not exist: NXDOMAIN (RFC 6604), the chain kept.
    Case(f"to-nowhere.default.svc.{Z}", "A", "NXDOMAIN",
         answer=chain(("to-nowhere", f"missing.default.svc.{Z}")), soa=f"{Z}."),
    Case(f"to-headless-empty.default.svc.{Z}", "A", "NXDOMAIN",
         answer=chain(("to-headless-empty", f"empty.default.svc.{Z}")), soa=f"{Z}."),
    # Loops end, as SERVFAIL.
    Case(f"loop-a.default.svc.{Z}", "A", "SERVFAIL"),
    Case(f"self.default.svc.{Z}", "A", "SERVFAIL"),
    # Outside the zone with no upstream: the CNAME alone.
    Case(f"outside.default.svc.{Z}", "A", answer=chain(("outside", "example.org"))),
    # Headless: no ready endpoints is NXDOMAIN (§2.4.1); one; several.
    Case(f"empty.default.svc.{Z}", "A", "NXDOMAIN", soa=f"{Z}."),
    Case(f"_http._tcp.empty.default.svc.{Z}", "SRV", "NXDOMAIN", soa=f"{Z}."),
    Case(f"one.default.svc.{Z}", "A", answer=[f"one.default.svc.{Z}. A 10.244.0.20"]),
    Case(f"10-244-0-20.one.default.svc.{Z}", "A", answer=[f"10-244-0-20.one.default.svc.{Z}. A 10.244.0.20"]),
    Case(f"many.default.svc.{Z}", "A",
         answer=[f"many.default.svc.{Z}. A 10.244.0.{n}" for n in (30, 31, 32)]),
    Case(f"db-0.many.default.svc.{Z}", "A", answer=[f"db-0.many.default.svc.{Z}. A 10.244.0.30"]),
    Case(f"10-244-0-31.many.default.svc.{Z}", "A", answer=[f"10-244-0-31.many.default.svc.{Z}. A 10.244.0.31"]),
    Case(f"db-9.many.default.svc.{Z}", "A", "NXDOMAIN", soa=f"{Z}."),
    # PTR: every headless endpoint under its name, with or without a hostname (§2.4.3, §2.1).
    Case("31.0.244.10.in-addr.arpa", "PTR",
         answer=[f"31.0.244.10.in-addr.arpa. PTR 10-244-0-31.many.default.svc.{Z}."]),
    Case("30.0.244.10.in-addr.arpa", "PTR", answer=[f"30.0.244.10.in-addr.arpa. PTR db-0.many.default.svc.{Z}."]),
    Case("20.0.244.10.in-addr.arpa", "PTR",
         answer=[f"20.0.244.10.in-addr.arpa. PTR 10-244-0-20.default.pod.{Z}.",
                 f"20.0.244.10.in-addr.arpa. PTR 10-244-0-20.one.default.svc.{Z}."]),
    Case("1.250.244.10.in-addr.arpa", "PTR",
         answer=[f"1.250.244.10.in-addr.arpa. PTR kubernetes.default.svc.{Z}."]),
    # Negative answers carry the SOA of the zone that was asked (RFC 2308 §3).
    Case("99.99.244.10.in-addr.arpa", "PTR", "NXDOMAIN", soa="244.10.in-addr.arpa."),
    Case("1.250.244.10.in-addr.arpa", "A", soa="244.10.in-addr.arpa."),
    Case(f"nope.default.svc.{Z}", "A", "NXDOMAIN", soa=f"{Z}."),
    Case(f"kubernetes.default.svc.{Z}", "TXT", soa=f"{Z}."),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name} {c.qtype}")
def test_answers_section_by_section(case: Case) -> None:
    reply = ask(case.name, case.qtype)
    assert dns.rcode.to_text(reply.rcode()) == case.rcode
    assert section(reply, "answer") == sorted(case.answer)
    soas = [r for r in reply.authority if r.rdtype == dns.rdatatype.SOA]
    if case.soa:
        assert [str(r.name) for r in soas] == [case.soa], section(reply, "authority")
    else:
        assert soas == [], section(reply, "authority")


def test_dns_version_has_the_specifications_ttl() -> None:
    reply = ask(f"dns-version.{Z}", "TXT")
    assert [(r.ttl, rd.to_text()) for r in reply.answer for rd in r] == [(28800, '"1.1.0"')]


@pytest.mark.parametrize(
    ("name", "qtype"),
    [(f"kubernetes.default.svc.{Z}", "A"), (f"nope.default.svc.{Z}", "A"), (f"kubernetes.default.svc.{Z}", "AAAA"),
     (f"loop-a.default.svc.{Z}", "A"), ("20.0.244.10.in-addr.arpa", "PTR"), ("example.org", "A")],
)  # fmt: skip
@pytest.mark.parametrize("upstream", [False, True])
def test_flags_for_every_kind_of_reply(name: str, qtype: str, upstream: bool) -> None:
    for asked in (dns.flags.RD, dns.flags.RD | dns.flags.AD, dns.flags.CD, dns.flags.AD | dns.flags.CD, 0):
        query = dns.message.make_query(name, qtype)
        query.flags = asked
        reply = handle(query.to_wire(), view(), CONFIG, 42, tcp=True, can_forward=upstream)
        if reply.forward:
            assert name == "example.org" and upstream, "only names outside the zone go upstream"
            continue
        assert reply.data is not None
        msg = dns.message.from_wire(reply.data)
        flags = msg.flags
        assert flags & dns.flags.QR
        assert not flags & dns.flags.AD, "no DNSSEC validation here: AD is never set (RFC 4035 §3.2.3)"
        assert bool(flags & dns.flags.CD) == bool(asked & dns.flags.CD), "CD is copied"
        assert bool(flags & dns.flags.RD) == bool(asked & dns.flags.RD), "RD is copied"
        if name == "example.org":
            assert msg.rcode() == dns.rcode.REFUSED and not flags & dns.flags.AA and not flags & dns.flags.RA
        else:
            assert flags & dns.flags.AA, "authoritative for the zone"
            assert bool(flags & dns.flags.RA) == upstream, "recursion is available only with an upstream"


def test_a_chain_leaving_the_zone_is_completed_by_the_upstream() -> None:
    query = dns.message.make_query(f"outside.default.svc.{Z}", "A")
    reply = handle(query.to_wire(), view(), CONFIG, 42, tcp=False, can_forward=True)
    assert reply.chase == "example.org." and reply.data is not None
    asked = dns.message.from_wire(chase_query(reply.data, reply.chase))
    assert str(asked.question[0].name) == "example.org." and asked.question[0].rdtype == dns.rdatatype.A
    assert asked.flags & dns.flags.RD
    upstream = dns.message.make_response(asked)
    upstream.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "A", "192.0.2.80"))
    merged = dns.message.from_wire(merge_chased(query.to_wire(), reply.data, upstream.to_wire(), tcp=False))
    assert merged.id == query.id and merged.rcode() == dns.rcode.NOERROR
    assert section(merged, "answer") == sorted([*chain(("outside", "example.org")), "example.org. A 192.0.2.80"])
    assert not merged.flags & dns.flags.AA, "part of the answer is the upstream's"
    # The upstream says the target does not exist: its rcode and SOA, the chain kept.
    nx = dns.message.make_response(asked)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    nx.authority.append(dns.rrset.from_text("org.", 900, "IN", "SOA", "a.org. h.org. 1 2 3 4 5"))
    merged = dns.message.from_wire(merge_chased(query.to_wire(), reply.data, nx.to_wire(), tcp=False))
    assert merged.rcode() == dns.rcode.NXDOMAIN and section(merged, "answer") == chain(("outside", "example.org"))
    assert [str(r.name) for r in merged.authority] == ["org."]
    # No answer from the upstream at all: the chain alone.
    alone = dns.message.from_wire(merge_chased(query.to_wire(), reply.data, None, tcp=False))
    assert section(alone, "answer") == chain(("outside", "example.org"))
