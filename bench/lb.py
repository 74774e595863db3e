"""bench-lb: the nftables backend against a kube-proxy-iptables-style
layout, at 100, 1,000 and 10,000 services with 2 endpoints each.

For each size, in a router namespace of its own with two endpoint pods and
a client pod: the time to program every service from empty, the time to
apply one service's endpoint change with all of them present, and the TCP
connect latency from the client pod to a VIP (the last one in the
reference's sequence, its worst case). The reference lays its rules out as
kube-proxy's iptables mode does (one rule per service in one chain, matched
in sequence, jumping to a chain per service that picks an endpoint chain),
written with `nft` (as iptables-nft would), one change rewriting that
service's chains (as `iptables-restore --noflush` of them would).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pinet.hostnet.netns import list_netns
from services.lb.backends.nftables import NftablesBackend
from services.lb.model import Frontend, RealServer, RouterLb, VirtualService

ROUTER = "pinet-blb-r"
PODS = {"pinet-blb-e1": "10.244.0.11", "pinet-blb-e2": "10.244.0.12", "pinet-blb-c": "10.244.0.21"}
SERVICE_CIDR = "10.244.240.0/20"

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(512)
while True:
    c, _ = s.accept(); c.close()
"""
# Times count TCP connects to ip:port; prints the median in microseconds.
CONNECTS = """
import socket, statistics, sys, time
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(count):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\0\\0\\0\\0\\0\\0\\0")
    t = time.perf_counter(); c.connect((ip, port)); times.append(time.perf_counter() - t); c.close()
print(statistics.median(times) * 1e6)
"""


def sh(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])}: {out.stderr.strip()}")
    return out.stdout


@contextmanager
def lab() -> Iterator[None]:
    names = [ROUTER, *PODS]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
        sh("ip", "-n", ROUTER, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ROUTER, "addr", "add", "10.244.0.1/16", "dev", "br0")
        sh("ip", "-n", ROUTER, "link", "set", "br0", "up")
        sh("ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i, (pod, address) in enumerate(PODS.items()):
            sh("ip", "-n", ROUTER, "link", "add", f"pv{i}", "type", "veth", "peer", "name", "eth0", "netns", pod)
            sh("ip", "-n", ROUTER, "link", "set", f"pv{i}", "master", "br0", "up")
            sh("ip", "-n", pod, "addr", "add", f"{address}/16", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "link", "set", "lo", "up")
            sh("ip", "-n", pod, "route", "add", SERVICE_CIDR, "via", "10.244.0.1")
        for pod in ("pinet-blb-e1", "pinet-blb-e2"):
            procs.append(subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SERVER]))
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
        for name in names:
            if name in list_netns():
                subprocess.run(["ip", "netns", "del", name], check=False)


def vip_port(i: int) -> tuple[str, int]:
    """Service i's address: 4,000 VIPs of the service range, then more ports."""
    base = 0x0AF4F000 + 16  # 10.244.240.16
    n = base + i % 4000
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", 80 + i // 4000


def model(count: int, changed: int = -1, port: int = 8000) -> RouterLb:
    services = {}
    for i in range(count):
        vip, vport = vip_port(i)
        target = port if i == changed else 8000
        servers = (RealServer(PODS["pinet-blb-e1"], target), RealServer(PODS["pinet-blb-e2"], target))
        vs = VirtualService("bench", f"default/s{i}", Frontend.CLUSTER_IP, vip, "tcp", vport, real_servers=servers)
        services[vs.key] = vs
    return RouterLb("bench", 4096, ROUTER, SERVICE_CIDR, "", services)


def connect_latency(vip: str, port: int, count: int = 400) -> float:
    return float(sh("ip", "netns", "exec", "pinet-blb-c", sys.executable, "-c", CONNECTS, vip, str(port), str(count)))


def reset() -> None:
    for table in ("pinet-lb", "pinet-ref"):
        subprocess.run(
            ["ip", "netns", "exec", ROUTER, "nft", "delete", "table", "ip", table], capture_output=True, check=False
        )


def pinet_run(count: int) -> tuple[float, list[float], float]:
    reset()
    backend = NftablesBackend()
    start = time.perf_counter()
    backend.sync(model(count), full=True)
    program = time.perf_counter() - start
    changes = []
    router = model(count)
    key = vip_port(count // 2)
    for k in range(20):
        # What the lb does for one Service's change: that service's elements only.
        vs = model(1, port=8000 + (k % 2 == 0), changed=0).services
        changed = {(key[0], "tcp", key[1]): dataclasses.replace(next(iter(vs.values())), vip=key[0], port=key[1])}
        start = time.perf_counter()
        backend.update(router, changed)
        changes.append(time.perf_counter() - start)
    backend.sync(model(count), full=True)
    vip, port = vip_port(count - 1)
    return program, changes, connect_latency(vip, port)


def reference_script(count: int) -> str:
    lines = [
        "table ip pinet-ref {",
        "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }",
        "  chain services { }",
        "}",
    ]
    for i in range(count):
        lines += _reference_service(i, 8000, create=True)
    return "\n".join(lines) + "\n"


def _reference_service(i: int, port: int, create: bool) -> list[str]:
    vip, vport = vip_port(i)
    t = "ip pinet-ref"
    lines = []
    if create:
        lines += [f"add chain {t} svc-{i}", f"add chain {t} sep-{i}-0", f"add chain {t} sep-{i}-1"]
        lines.append(f"add rule {t} services ip daddr {vip} tcp dport {vport} jump svc-{i}")
    else:
        lines += [f"flush chain {t} svc-{i}", f"flush chain {t} sep-{i}-0", f"flush chain {t} sep-{i}-1"]
    lines += [
        f"add rule {t} svc-{i} numgen random mod 2 == 0 jump sep-{i}-0",
        f"add rule {t} svc-{i} jump sep-{i}-1",
        f"add rule {t} sep-{i}-0 meta l4proto tcp dnat to {PODS['pinet-blb-e1']}:{port}",
        f"add rule {t} sep-{i}-1 meta l4proto tcp dnat to {PODS['pinet-blb-e2']}:{port}",
    ]
    return lines


def reference_run(count: int) -> tuple[float, list[float], float]:
    reset()
    script = reference_script(count)
    start = time.perf_counter()
    sh("ip", "netns", "exec", ROUTER, "nft", "-f", "-", stdin=script)
    program = time.perf_counter() - start
    changes = []
    for k in range(20):
        change = "\n".join(_reference_service(count // 2, 8000 + (k % 2 == 0), create=False)) + "\n"
        start = time.perf_counter()
        sh("ip", "netns", "exec", ROUTER, "nft", "-f", "-", stdin=change)
        changes.append(time.perf_counter() - start)
    vip, port = vip_port(count - 1)
    return program, changes, connect_latency(vip, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with lab():
        for count in sizes:
            for name, run in (("pinet nftables", pinet_run), ("reference (iptables layout)", reference_run)):
                program, changes, latency = run(count)
                rows.append((count, name, program, statistics.median(changes), max(changes), latency))
        reset()
    print(f"{'services':>8}  {'layout':<28} {'program all':>12} {'one change p50':>15} {'max':>9} {'connect p50':>12}")
    for count, name, program, p50, worst, latency in rows:
        print(
            f"{count:>8}  {name:<28} {program * 1000:>9.0f} ms {p50 * 1000:>12.2f} ms {worst * 1000:>6.2f} ms"
            f" {latency:>9.0f} µs"
        )
    mine = {r[0]: r for r in rows if r[1].startswith("pinet")}
    small, large = mine[min(sizes)], mine[max(sizes)]
    print()
    print(f"targets at {max(sizes)} services: program all < 2 s: {large[2]:.2f} s; "
          f"one change < 20 ms: {large[4] * 1000:.2f} ms (max); "
          f"connect latency within 10% of {min(sizes)} services: {large[5] / small[5]:.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
