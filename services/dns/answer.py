"""Answers for the cluster zone (pure logic): parse the query name into a
request, look it up in one tenant's view, build the reply.

Follows the Kubernetes DNS-Based Service Discovery specification:
<svc>.<ns>.svc.<zone> A (cluster IP, or every endpoint when headless),
<hostname>.<svc>.<ns>.svc.<zone> A, _<port>._<proto>.<svc>.<ns>.svc.<zone>
SRV, PTR for service, endpoint and pod IPs, a-b-c-d.<ns>.pod.<zone> A,
dns-version.<zone> TXT, ExternalName as CNAME (followed into the zone, RFC
1034 §4.3.2); NXDOMAIN for names that do not exist (a headless service
with no ready endpoints among them, §2.4.1) and NODATA for names that exist
with other types, both with the SOA of the zone that was asked (RFC 2308
§3: the cluster zone, or the reverse zone of a network we answer for).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dnslib import CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

from services.dns.view import Service, TenantView

SCHEMA_VERSION = "1.1.0"
#: dns-version's TTL: the specification's example, and CoreDNS's.
VERSION_TTL = 28800
#: CNAMEs followed inside the zone before giving up (a chain this long is
#: a loop or a mistake).
CHAIN_LIMIT = 8


@dataclass(frozen=True)
class Config:
    zone: str = "cluster.local"
    ttl: int = 5
    # Reverse lookups answered for these networks; others are not ours.
    reverse_networks: tuple[str, ...] = ("10.244.0.0/16",)


@dataclass
class Result:
    """What the zone says about one name."""

    exists: bool
    answers: list[RR]
    additional: list[RR]
    in_zone: bool = True


def soa(config: Config, serial: int, owner: str = "") -> RR:
    """The SOA of the cluster zone, or of the zone `owner` (a reverse zone)."""
    zone = config.zone + "."
    return RR(
        owner or zone, QTYPE.SOA, ttl=config.ttl,
        rdata=SOA(f"ns.dns.{zone}", f"hostmaster.{zone}", (serial % 2**32, 7200, 1800, 86400, config.ttl)),
    )  # fmt: skip


def reverse_zone(ip: str, config: Config) -> str:
    """The in-addr.arpa zone pinet answers ip's PTR in: its network's
    octets (10.244.0.0/16 -> 244.10.in-addr.arpa.)."""
    for cidr in config.reverse_networks:
        network = ipaddress.IPv4Network(cidr)
        if ipaddress.IPv4Address(ip) in network:
            octets = str(network.network_address).split(".")[: network.prefixlen // 8]
            return ".".join(reversed(octets)) + ".in-addr.arpa."
    return "in-addr.arpa."


def zone_soa(labels: tuple[str, ...], config: Config, serial: int) -> RR:
    """The SOA for a negative answer about the name with these labels."""
    ip = _reverse_ip(labels, config)
    return soa(config, serial, reverse_zone(ip, config)) if ip is not None else soa(config, serial)


def in_zone(labels: tuple[str, ...], config: Config) -> bool:
    zone = tuple(config.zone.split("."))
    return labels[-len(zone) :] == zone or _reverse_ip(labels, config) is not None


def _reverse_ip(labels: tuple[str, ...], config: Config) -> str | None:
    if len(labels) != 6 or labels[-2:] != ("in-addr", "arpa"):
        return None
    try:
        ip = str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
    except ValueError:
        return None
    return ip if any(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(n) for n in config.reverse_networks) else None


def lookup(
    qname: DNSLabel, qtype: int, view: TenantView | None, config: Config, dns_ip: str = "", serial: int = 0
) -> Result:
    """Every record of qname (all types), and whether qname exists."""
    labels = tuple(part.decode().lower() for part in qname.label)
    name = str(qname)  # answers echo the query's spelling
    zone = tuple(config.zone.split("."))
    ttl = config.ttl
    view = view or TenantView()
    if labels[-2:] == ("in-addr", "arpa"):
        ip = _reverse_ip(labels, config)
        if ip is None:
            return Result(False, [], [], in_zone=False)
        targets = view.reverse(ip, config.zone)
        return Result(bool(targets), [RR(name, QTYPE.PTR, ttl=ttl, rdata=PTR(t)) for t in targets], [])
    rest = labels[: -len(zone)]
    if not rest:
        apex = soa(config, serial)
        apex.rname = qname
        return Result(True, [RR(name, QTYPE.NS, ttl=ttl, rdata=NS(f"ns.dns.{config.zone}.")), apex], [])
    if rest == ("dns-version",):
        return Result(True, [RR(name, QTYPE.TXT, ttl=VERSION_TTL, rdata=TXT(SCHEMA_VERSION))], [])
    if rest == ("ns", "dns") and dns_ip:
        return Result(True, [RR(name, QTYPE.A, ttl=ttl, rdata=A(dns_ip))], [])
    if rest[-1] == "svc":
        return _service_names(name, rest[:-1], view, config)
    if rest[-1] == "pod":
        return _pod_names(name, rest[:-1], view, ttl)
    return Result(False, [], [])


def _service_names(name: str, rest: tuple[str, ...], view: TenantView, config: Config) -> Result:
    ttl, zone = config.ttl, config.zone
    if len(rest) <= 1:  # svc.<zone> and <ns>.svc.<zone>: empty non-terminals
        return Result(len(rest) == 0 or rest[0] in view.namespaces, [], [])
    svc = view.service(rest[-1], rest[-2])
    if svc is None or (svc.headless and not svc.endpoints):
        # A headless service with no ready endpoints has no name (§2.4.1).
        return Result(False, [], [])
    if len(rest) == 2:
        return Result(True, _service_records(name, svc, ttl), [])
    if len(rest) == 4 and rest[0].startswith("_") and rest[1].startswith("_"):
        return _srv(name, svc, rest[0][1:], rest[1][1:], ttl, zone)
    if len(rest) == 3:
        if not svc.headless:
            return Result(False, [], [])
        hits = [e for e in svc.endpoints if _endpoint_label(e.hostname, e.ip) == rest[0]]
        return Result(bool(hits), [RR(name, QTYPE.A, ttl=ttl, rdata=A(e.ip)) for e in hits], [])
    return Result(False, [], [])


def _endpoint_label(hostname: str, ip: str) -> str:
    return hostname or ip.replace(".", "-")


def _service_records(name: str, svc: Service, ttl: int) -> list[RR]:
    if svc.external_name:
        return [RR(name, QTYPE.CNAME, ttl=ttl, rdata=CNAME(svc.external_name + "."))]
    if svc.cluster_ip:
        return [RR(name, QTYPE.A, ttl=ttl, rdata=A(svc.cluster_ip))]
    return [RR(name, QTYPE.A, ttl=ttl, rdata=A(e.ip)) for e in svc.endpoints]


def _srv(name: str, svc: Service, port_name: str, proto: str, ttl: int, zone: str) -> Result:
    port = next((p for p in svc.ports if p.name == port_name and p.protocol == proto), None)
    if port is None or svc.external_name:
        return Result(False, [], [])
    base = f"{svc.name}.{svc.namespace}.svc.{zone}."
    if svc.cluster_ip:
        answer = RR(name, QTYPE.SRV, ttl=ttl, rdata=SRV(0, 100, port.port, base))
        return Result(True, [answer], [RR(base, QTYPE.A, ttl=ttl, rdata=A(svc.cluster_ip))])
    answers, additional = [], []
    targets = [(e, p) for e in svc.endpoints for p in e.ports if p.name == port_name and p.protocol == proto]
    weight = max(100 // len(targets), 1) if targets else 100
    for e, p in targets:
        target = f"{_endpoint_label(e.hostname, e.ip)}.{base}"
        answers.append(RR(name, QTYPE.SRV, ttl=ttl, rdata=SRV(0, weight, p.port, target)))
        additional.append(RR(target, QTYPE.A, ttl=ttl, rdata=A(e.ip)))
    return Result(True, answers, additional)


def _pod_names(name: str, rest: tuple[str, ...], view: TenantView, ttl: int) -> Result:
    if len(rest) == 0:
        return Result(True, [], [])
    if len(rest) == 1:
        return Result(rest[0] in view.namespaces, [], [])
    if len(rest) != 2:
        return Result(False, [], [])
    try:
        ip = str(ipaddress.IPv4Address(rest[0].replace("-", ".")))
    except ValueError:
        return Result(False, [], [])
    if rest[1] not in view.pod_ips.get(ip, ()):
        return Result(False, [], [])
    return Result(True, [RR(name, QTYPE.A, ttl=ttl, rdata=A(ip))], [])


def matching(records: list[RR], qtype: int) -> list[RR]:
    if qtype == QTYPE.ANY:
        return records
    out = [r for r in records if r.rtype == qtype]
    if not out:
        # A CNAME answers every type of its name.
        out = [r for r in records if r.rtype == QTYPE.CNAME]
    return out


@dataclass
class Answer:
    """A query's whole answer in the zone, CNAMEs followed."""

    rcode: int
    answers: list[RR]
    additional: list[RR]
    authority: list[RR]
    #: A CNAME target outside the zone, for the upstream to answer.
    outside: str = ""


def _labels(name: DNSLabel) -> tuple[str, ...]:
    return tuple(part.decode(errors="replace").lower() for part in name.label)


def resolve(
    qname: DNSLabel, qtype: int, view: TenantView | None, config: Config, dns_ip: str = "", serial: int = 0
) -> Answer:
    """Look qname up and, where the answer is a CNAME to a name of the zone
    and another type was asked, go on with its target (RFC 1034 §4.3.2):
    the chain and the target's records in the answer, the rcode and SOA
    those of the last name. A loop (or a chain over CHAIN_LIMIT) is
    SERVFAIL."""
    name, seen = qname, {_labels(qname)}
    chain: list[RR] = []
    while True:
        labels = _labels(name)
        result = lookup(name, qtype, view, config, dns_ip, serial)
        if not result.exists:
            return Answer(RCODE.NXDOMAIN, chain, [], [zone_soa(labels, config, serial)])
        answers = matching(result.answers, qtype)
        if not answers:
            return Answer(RCODE.NOERROR, chain, [], [zone_soa(labels, config, serial)])
        if answers[0].rtype != QTYPE.CNAME or qtype in (QTYPE.CNAME, QTYPE.ANY):
            srv = any(rr.rtype == QTYPE.SRV for rr in answers)
            return Answer(RCODE.NOERROR, chain + answers, result.additional if srv else [], [])
        chain.append(answers[0])
        target = DNSLabel(str(answers[0].rdata.label))
        target_labels = _labels(target)
        if target_labels in seen or len(chain) > CHAIN_LIMIT:
            return Answer(RCODE.SERVFAIL, [], [], [])
        seen.add(target_labels)
        if not in_zone(target_labels, config):
            return Answer(RCODE.NOERROR, chain, [], [], outside=str(target))
        name = target
