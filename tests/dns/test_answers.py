"""A table of queries from the Kubernetes DNS specification and its edge
cases, asked with dnspython and with dig over UDP and TCP."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from pinet.api.network.v1 import network_pb2
from tests.dns.conftest import DnsLab

Z = "cluster.local"


@dataclass
class Case:
    name: str
    qtype: str
    rcode: str = "NOERROR"
    # Expected answer data, as dig +short would print it (order ignored).
    answer: list[str] = field(default_factory=list)
    soa_in_authority: bool = False
    additional: list[str] = field(default_factory=list)


def cases(ips: dict[str, str]) -> list[Case]:
    web, db0, db1, api = ips["web"], ips["db-0"], ips["db-1"], ips["api"]
    pod = ips["web-1"]

    def rev(ip: str) -> str:
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"

    def dash(ip: str) -> str:
        return ip.replace(".", "-")

    return [
        Case(f"web.default.svc.{Z}", "A", answer=[web]),
        Case("WEB.Default.SVC.Cluster.Local", "A", answer=[web]),
        Case(f"web.default.svc.{Z}.", "A", answer=[web]),
        Case(f"web.default.svc.{Z}", "AAAA", soa_in_authority=True),
        Case(f"web.default.svc.{Z}", "TXT", soa_in_authority=True),
        Case(f"web.default.svc.{Z}", "MX", soa_in_authority=True),
        Case(f"web.default.svc.{Z}", "SRV", soa_in_authority=True),
        Case(f"_http._tcp.web.default.svc.{Z}", "SRV", answer=[f"0 100 80 web.default.svc.{Z}."], additional=[web]),
        Case(f"_dns._udp.web.default.svc.{Z}", "SRV", answer=[f"0 100 53 web.default.svc.{Z}."], additional=[web]),
        Case(f"_http._udp.web.default.svc.{Z}", "SRV", "NXDOMAIN", soa_in_authority=True),
        Case(f"_nope._tcp.web.default.svc.{Z}", "SRV", "NXDOMAIN", soa_in_authority=True),
        Case(f"_http._tcp.web.default.svc.{Z}", "A", soa_in_authority=True),
        Case(f"nope.default.svc.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"web.nope.svc.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"web.prod.svc.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"api.prod.svc.{Z}", "A", answer=[api]),
        Case(f"api.default.svc.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"db.default.svc.{Z}", "A", answer=[db0, db1]),
        Case(f"db-0.db.default.svc.{Z}", "A", answer=[db0]),
        Case(f"db-1.db.default.svc.{Z}", "A", answer=[db1]),
        Case(f"db-2.db.default.svc.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"db-0.db.default.svc.{Z}", "AAAA", soa_in_authority=True),
        Case(
            f"_pg._tcp.db.default.svc.{Z}",
            "SRV",
            answer=[f"0 50 5432 db-0.db.default.svc.{Z}.", f"0 50 5432 db-1.db.default.svc.{Z}."],
            additional=[db0, db1],
        ),
        Case(f"x.web.default.svc.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"ext.default.svc.{Z}", "CNAME", answer=["example.org."]),
        Case(f"ext.default.svc.{Z}", "A", answer=["example.org."]),
        Case(f"{dash(pod)}.default.pod.{Z}", "A", answer=[pod]),
        Case(f"{dash(pod)}.prod.pod.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"10-244-255-254.default.pod.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"not-an-ip.default.pod.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case(f"{dash(pod)}.default.pod.{Z}", "AAAA", soa_in_authority=True),
        Case(rev(web), "PTR", answer=[f"web.default.svc.{Z}."]),
        Case(rev(api), "PTR", answer=[f"api.prod.svc.{Z}."]),
        Case(rev(db0), "PTR", answer=[f"db-0.db.default.svc.{Z}.", f"{dash(db0)}.default.pod.{Z}."]),
        Case(rev(pod), "PTR", answer=[f"{dash(pod)}.default.pod.{Z}."]),
        Case(rev("10.244.200.200"), "PTR", "NXDOMAIN", soa_in_authority=True),
        Case(f"dns-version.{Z}", "TXT", answer=['"1.1.0"']),
        Case(f"dns-version.{Z}", "A", soa_in_authority=True),
        Case(f"default.svc.{Z}", "A", soa_in_authority=True),
        Case(f"svc.{Z}", "A", soa_in_authority=True),
        Case(f"pod.{Z}", "A", soa_in_authority=True),
        Case(Z, "SOA", answer=[]),  # checked below: the SOA itself
        Case(Z, "NS", answer=[f"ns.dns.{Z}."]),
        Case(f"nothing.{Z}", "A", "NXDOMAIN", soa_in_authority=True),
        Case("example.com", "A", "REFUSED"),
        Case("8.8.8.8.in-addr.arpa", "PTR", "REFUSED"),
    ]


def ask_dnspython(port: int, name: str, qtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=3)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3)


def check(case: Case, reply: dns.message.Message, how: str) -> None:
    where = f"{case.name} {case.qtype} via {how}"
    assert dns.rcode.to_text(reply.rcode()) == case.rcode, where
    if case.rcode == "REFUSED":
        return
    assert reply.flags & dns.flags.AA, f"{where}: authoritative"
    assert reply.flags & dns.flags.QR
    got = sorted(rd.to_text() for rrset in reply.answer for rd in rrset)
    if case.qtype == "SOA":
        assert len(got) == 1 and got[0].startswith(f"ns.dns.{Z}. hostmaster.{Z}."), where
    else:
        assert got == sorted(case.answer), f"{where}: {got}"
    for rrset in reply.answer:
        assert rrset.name.to_text().rstrip(".") == case.name.rstrip("."), f"{where}: the query's spelling is echoed"
    soa = [rrset for rrset in reply.authority if rrset.rdtype == dns.rdatatype.SOA]
    assert bool(soa) == case.soa_in_authority, f"{where}: SOA in authority"
    additional = sorted(rd.to_text() for rrset in reply.additional for rd in rrset if rrset.rdtype == dns.rdatatype.A)
    assert additional == sorted(case.additional), f"{where}: additional {additional}"
    assert reply.edns == 0, f"{where}: EDNS0 is echoed"


def every_failure(attempts: list[Callable[[], None]]) -> None:
    """Runs every check, then fails with all that failed: one wrong answer
    does not hide the others."""
    failures = []
    for attempt in attempts:
        try:
            attempt()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} of {len(attempts)} failed:\n" + "\n".join(failures)


async def test_table_with_dnspython_over_udp_and_tcp(dns_lab: DnsLab) -> None:
    attempts: list[Callable[[], None]] = []
    for case in cases(dns_lab.ips):
        for tcp in (False, True):
            reply = await asyncio.to_thread(ask_dnspython, dns_lab.port, case.name, case.qtype, tcp)
            where = "dnspython/tcp" if tcp else "dnspython/udp"
            attempts.append(functools.partial(check, case, reply, where))
    every_failure(attempts)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_table_with_dig(dns_lab: DnsLab, transport: str) -> None:
    # Async, with dig in a thread: the test's event loop keeps the node
    # heartbeats of the fixture's agents going meanwhile.
    attempts: list[Callable[[], None]] = []
    for case in cases(dns_lab.ips):
        out = await asyncio.to_thread(
            subprocess.run,
            ["dig", "@127.0.0.1", "-p", str(dns_lab.port), case.name, case.qtype, "+tries=1", "+time=3",
             "+tcp" if transport == "tcp" else "+notcp"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        attempts.append(functools.partial(_check_dig, case, out.stdout, transport))
    every_failure(attempts)


def _check_dig(case: Case, printed: str, transport: str) -> None:
    try:
        check(case, dns.message.from_text(_dig_to_message(printed)), f"dig/{transport}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{printed}") from None


def _dig_to_message(text: str) -> str:
    """dig's output as the text form dnspython reads."""
    lines = []
    for line in text.splitlines():
        if line.startswith(";; ->>HEADER<<-"):
            parts = dict(p.split(": ") for p in line.removeprefix(";; ->>HEADER<<- ").split(", "))
            lines += [f"id {parts['id']}", f"opcode {parts['opcode']}", f"rcode {parts['status']}"]
        elif line.startswith(";; flags:"):
            flags = line.split(";")[2].split(":")[1].strip().split()
            lines.append("flags " + " ".join(flags))
        elif line.startswith("; EDNS:"):
            lines.append("edns 0")
        elif line.startswith(";; QUESTION SECTION:"):
            lines.append(";QUESTION")
        elif line.startswith(";; ANSWER SECTION:"):
            lines.append(";ANSWER")
        elif line.startswith(";; AUTHORITY SECTION:"):
            lines.append(";AUTHORITY")
        elif line.startswith(";; ADDITIONAL SECTION:"):
            lines.append(";ADDITIONAL")
        elif line.startswith(";") and lines and lines[-1] == ";QUESTION":
            lines.append(line[1:])
        elif line and not line.startswith(";"):
            lines.append(line)
    return "\n".join(lines)


async def test_truncation_sets_tc_and_tcp_answers_whole(dns_lab: DnsLab) -> None:
    t = dns_lab.tenant
    ports = "".join(f"\n    - {{name: p{i}, port: {1000 + i}}}" for i in range(60))
    from tests.dns.conftest import create_objects

    await create_objects(t, f"apiVersion: v1\nkind: Service\nmetadata: {{name: big}}\nspec:\n  clusterIP: None\n"
                            f"  selector: {{app: big}}\n  ports:{ports}\n")  # fmt: skip
    for i in range(40):
        await create_objects(t, f"apiVersion: v1\nkind: Pod\nmetadata: {{name: big-{i}, labels: {{app: big}}}}\n"
                                "spec: {containers: [{name: c, image: x}]}\n")  # fmt: skip
    name = f"big.default.svc.{Z}"
    deadline = time.monotonic() + 15
    while True:
        reply = await asyncio.to_thread(ask_dnspython, dns_lab.port, name, "A", True)
        if len(reply.answer[0]) == 40 if reply.answer else False:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    query = dns.message.make_query(name, "A")  # no EDNS: 512 bytes
    udp = await asyncio.to_thread(
        dns.query.udp, query, "127.0.0.1", 3, dns_lab.port, ignore_trailing=True, raise_on_truncation=False
    )
    assert udp.flags & dns.flags.TC and not udp.answer
    query = dns.message.make_query(name, "A", use_edns=0, payload=4096)
    udp = await asyncio.to_thread(dns.query.udp, query, "127.0.0.1", 3, dns_lab.port)
    assert not udp.flags & dns.flags.TC and len(udp.answer[0]) == 40, "the client's UDP size is honoured"
    for i in range(40):
        await t.call("DeletePod", network_pb2.ObjectRef(name=f"big-{i}"))
    await t.call("DeleteService", network_pb2.ObjectRef(name="big"))


async def test_malformed_and_unsupported(dns_lab: DnsLab) -> None:
    import socket

    def raw(data: bytes) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            s.sendto(data, ("127.0.0.1", dns_lab.port))
            try:
                return s.recv(4096)
            except TimeoutError:
                return None

    garbage = raw(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc")
    assert garbage is not None and garbage[:2] == b"\x12\x34" and garbage[3] & 0x0F == 1, "FORMERR"
    assert raw(b"\x01") is None, "too short to answer"
    notify = dns.message.make_query(f"web.default.svc.{Z}", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = raw(notify.to_wire())
    assert reply is not None and reply[3] & 0x0F == 4, "NOTIMP"
    # And it still answers afterwards.
    assert ask_dnspython(dns_lab.port, f"web.default.svc.{Z}", "A").answer
