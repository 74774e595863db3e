"""100,000 random and mutated packets: the server neither crashes nor
stalls, and keeps answering correct queries meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

import dns.exception
import dns.message
import dns.query
import pytest

from tests.dns.conftest import DnsLab

Z = "cluster.local"


def mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    base = [
        dns.message.make_query(f"web.default.svc.{Z}", t, use_edns=rng.random() < 0.5).to_wire()
        for t in ("A", "SRV", "PTR", "TXT", "AAAA")
    ]
    out = []
    for _ in range(count):
        kind = rng.randrange(7)
        packet = bytearray(rng.choice(base))
        if kind == 0:  # random bytes
            packet = bytearray(rng.randbytes(rng.randrange(0, 600)))
        elif kind == 1:  # truncated
            packet = packet[: rng.randrange(0, len(packet))]
        elif kind == 2:  # flipped bytes
            for _ in range(rng.randrange(1, 8)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        elif kind == 3:  # a label length running past the end
            packet[12] = rng.randrange(40, 64)
        elif kind == 4:  # a compression pointer to itself, or a loop of two
            packet = packet[:12] + (b"\xc0\x0c" if rng.random() < 0.5 else b"\xc0\x0e\xc0\x0c") + b"\x00\x01\x00\x01"
        elif kind == 5:  # huge section counts
            packet[4:12] = struct.pack("!HHHH", *(rng.choice((0, 1, 0xFFFF)) for _ in range(4)))
        else:  # odd opcodes and flags
            packet[2] = rng.randrange(256)
            packet[3] = rng.randrange(256)
        out.append(bytes(packet))
    return out


def ask(port: int) -> list[str]:
    """A correct query; retried because a flood may drop a datagram (a
    stalled server would miss all three)."""
    query = dns.message.make_query(f"web.default.svc.{Z}", "A")
    for attempt in range(3):
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=1)
            return [rd.to_text() for rrset in reply.answer for rd in rrset]
        except dns.exception.Timeout:
            if attempt == 2:
                raise
    return []


@pytest.mark.slow
async def test_fuzzed_packets_neither_crash_nor_stall_the_server(dns_lab: DnsLab) -> None:
    expected = [dns_lab.ips["web"]]
    packets = mutations(20261122, 100_000)

    def blast() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for i, packet in enumerate(packets):
                with contextlib.suppress(BlockingIOError):
                    s.sendto(packet, ("127.0.0.1", dns_lab.port))
                if i % 5000 == 4999:
                    assert ask(dns_lab.port) == expected, f"after {i + 1} packets"
                    # Drain replies so our receive buffer does not matter.
                    while True:
                        try:
                            s.recv(65535)
                        except BlockingIOError:
                            break

    await asyncio.to_thread(blast)
    assert ask(dns_lab.port) == expected
    assert dns_lab.dns.proc is not None and dns_lab.dns.proc.returncode is None, "the server is alive"
    # TCP with garbage frames as well.
    _, writer = await asyncio.open_connection("127.0.0.1", dns_lab.port)
    for packet in packets[:200]:
        writer.write(struct.pack("!H", len(packet)) + packet)
    writer.write(b"\x00")  # and a frame cut short
    # The server hangs up on a frame too short to answer; that may come first.
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()
    assert ask(dns_lab.port) == expected
