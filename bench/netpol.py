"""NetworkPolicy at scale on one host: a tenant of 1,000 pods and 100,
1,000 and 10,000 policies. Prints, per size, the time to program all from
empty, the time one policy change and one pod-label change take to reach
the kernel (p50/p99), and the TCP connect latency between two pods through
the router, beside no policy table at all and beside a reference layout
with one rule per (policy, peer, port) matched in sequence over per-policy
address sets, as iptables/ipset implementations (kube-router) lay it out.

Every router is a real namespace with a bridge, two pod namespaces on veth
legs and the other 998 pods present only as addresses. The three routers
of a size are measured in turn, one connect at a time, so that each meets
the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf import json_format

from bench.common import percentile
from pinet.api.network.v1 import policy_pb2
from pinet.hostnet.netns import entered
from pinet.hostnet.nft import Nft
from services.netagent.policy_engine import PodInfo, TenantPolicies
from services.netagent.policy_model import compile_policy
from services.netagent.policy_tables import PolicyTables

PODS = 1000
NAMESPACES = 10
APPS = 50
CLIENT, SERVER = "10.244.0.10", "10.244.0.11"
PORT = 9000
REF_TABLE = "ip pinet-bench-ref"
SERVER_SCRIPT = rf"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


# ------------------------------------------------------------- the tenant


def pods() -> list[PodInfo]:
    """The client (app1) and server (app0) in ns0, and 998 others."""
    out = [
        PodInfo("client", CLIENT, "ns0", frozenset({("app", "app1")}), frozenset()),
        PodInfo("server", SERVER, "ns0", frozenset({("app", "app0")}), frozenset({(6, "http", PORT)})),
    ]
    for i in range(2, PODS):
        ip = f"10.244.{1 + i // 250}.{i % 250 + 1}"
        out.append(
            PodInfo(f"p{i}", ip, f"ns{i % NAMESPACES}", frozenset({("app", f"app{(i // 10) % APPS}")}), frozenset())
        )
    return out


def policy(i: int) -> policy_pb2.NetworkPolicy:
    """Policy i: pods of one app take TCP on one port from another app of
    their namespace; every third also fences its egress to an address block."""
    spec: dict[str, object] = {
        "podSelector": {"matchLabels": {"app": f"app{(i // NAMESPACES) % APPS}"}},
        "policyTypes": ["POLICY_TYPE_INGRESS"],
        "ingress": [{"peers": [{"podSelector": {"matchLabels": {"app": f"app{(i * 7) % APPS}"}}}],
                     "ports": [{"protocol": "PROTOCOL_TCP", "port": 1000 + i % 100}]}],
    }  # fmt: skip
    if i % 3 == 0:
        spec["policyTypes"] = ["POLICY_TYPE_INGRESS", "POLICY_TYPE_EGRESS"]
        spec["egress"] = [{"peers": [{"ipBlock": {"cidr": f"198.51.100.{(i % 64) * 4}/30"}}]}]
    doc = {"metadata": {"name": f"p{i}", "namespace": f"ns{i % NAMESPACES}"}, "spec": spec}
    return json_format.ParseDict(doc, policy_pb2.NetworkPolicy())


def measured_pair() -> list[policy_pb2.NetworkPolicy]:
    """What lets the client (whose egress other policies fence) connect to
    the server (whose ingress they fence)."""
    rule = {"ports": [{"protocol": "PROTOCOL_TCP", "port": PORT}]}
    docs = [
        {"metadata": {"name": "server-from-client", "namespace": "ns0"},
         "spec": {"podSelector": {"matchLabels": {"app": "app0"}}, "policyTypes": ["POLICY_TYPE_INGRESS"],
                  "ingress": [{"peers": [{"podSelector": {"matchLabels": {"app": "app1"}}}], **rule}]}},
        {"metadata": {"name": "client-to-server", "namespace": "ns0"},
         "spec": {"podSelector": {"matchLabels": {"app": "app1"}}, "policyTypes": ["POLICY_TYPE_EGRESS"],
                  "egress": [{"peers": [{"podSelector": {"matchLabels": {"app": "app0"}}}], **rule}]}},
    ]  # fmt: skip
    return [json_format.ParseDict(doc, policy_pb2.NetworkPolicy()) for doc in docs]


# ---------------------------------------------------------------- routers


@dataclass
class Router:
    name: str
    netns: str = ""
    client_ns: str = ""
    server: subprocess.Popen[bytes] | None = None
    connect_us: list[float] = field(default_factory=list)

    def up(self) -> Router:
        self.netns, self.client_ns = f"pinet-bnp-{self.name}", f"pinet-bnp-{self.name}-c"
        server_ns = f"pinet-bnp-{self.name}-s"
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.netns, "link", "set", "br0", "up")
        sh("ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        for pod_ns, ip, leg in ((self.client_ns, CLIENT, "c"), (server_ns, SERVER, "s")):
            sh("ip", "netns", "add", pod_ns)
            sh("ip", "-n", pod_ns, "link", "set", "lo", "up")
            sh("ip", "-n", self.netns, "link", "add", f"pv{leg}", "type", "veth", "peer", "name", "eth0",
               "netns", pod_ns)  # fmt: skip
            sh("ip", "-n", self.netns, "link", "set", f"pv{leg}", "master", "br0", "up")
            sh("ip", "-n", pod_ns, "addr", "add", f"{ip}/16", "dev", "eth0")
            sh("ip", "-n", pod_ns, "link", "set", "eth0", "up")
        self.server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", SERVER_SCRIPT])
        return self

    def connect(self) -> None:
        with entered(self.client_ns):
            sock = socket.socket()
        sock.settimeout(2)
        start = time.perf_counter()
        sock.connect((SERVER, PORT))
        self.connect_us.append((time.perf_counter() - start) * 1e6)
        sock.close()

    def down(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        for ns in (self.client_ns, f"pinet-bnp-{self.name}-s", self.netns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@contextlib.contextmanager
def routers(*names: str) -> Iterator[list[Router]]:
    made: list[Router] = []
    try:
        for name in names:
            made.append(Router(name))
            made[-1].up()
        yield made
    finally:
        for r in made:
            r.down()


# -------------------------------------------------------------- reference


def reference_script(objects: list[policy_pb2.NetworkPolicy], all_pods: list[PodInfo]) -> str:
    """One rule per (policy, peer, port), matched in order, over per-policy
    target and peer address sets; the measured pair's policy comes last."""
    t = REF_TABLE
    lines = [f"add table {t}", f"add set {t} isolated {{ type ipv4_addr; }}",
             f"add chain {t} postrouting {{ type filter hook postrouting priority filter; policy accept; }}",
             f"add chain {t} ingress", f"add rule {t} postrouting ct state != new accept",
             f"add rule {t} postrouting ip daddr @isolated jump ingress"]  # fmt: skip
    isolated: set[str] = set()
    for n, obj in enumerate(objects):
        compiled = compile_policy(obj)
        targets = [
            p.ip for p in all_pods if p.namespace == compiled.namespace and compiled.target.matches(dict(p.labels))
        ]
        isolated.update(targets)
        lines.append(f"add set {t} t{n} {{ type ipv4_addr; }}")
        if targets:
            lines.append(f"add element {t} t{n} {{ {', '.join(targets)} }}")
        for r, rule in enumerate(compiled.ingress or ()):
            for q, peer in enumerate(rule.peers):
                peers = [p.ip for p in all_pods if p.namespace == compiled.namespace
                         and peer.pods.matches(dict(p.labels))]  # type: ignore[union-attr]  # fmt: skip
                lines.append(f"add set {t} f{n}-{r}-{q} {{ type ipv4_addr; }}")
                if peers:
                    lines.append(f"add element {t} f{n}-{r}-{q} {{ {', '.join(peers)} }}")
                for port in rule.ports:
                    first, last = port.ports  # type: ignore[union-attr]
                    lines.append(f"add rule {t} ingress ip daddr @t{n} ip saddr @f{n}-{r}-{q} "
                                 f"tcp dport {first}-{last} accept")  # fmt: skip
    lines.append(f"add rule {t} ingress drop")
    if isolated:
        lines.append(f"add element {t} isolated {{ {', '.join(sorted(isolated))} }}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- main


def run_size(count: int, connects: int, changes: int) -> dict[str, str]:
    rng = random.Random(count)
    all_pods = pods()
    objects = [policy(i) for i in range(count)] + measured_pair()
    with routers("none", "pinet", "ref") as (none, mine, ref):
        tables = PolicyTables()
        try:
            start = time.perf_counter()
            engine = TenantPolicies()
            for p in all_pods:
                engine.set_pod(p, p.uid)
            for obj in objects:
                engine.set_policy(f"{obj.metadata.namespace}/{obj.metadata.name}", compile_policy(obj))
            state = engine.state()
            computed = time.perf_counter() - start
            tables.ensure(mine.netns, state)
            program = time.perf_counter() - start
            elements = sum(map(len, state.maps.values()))

            start = time.perf_counter()
            with Nft(ref.netns) as nft:
                nft.run(reference_script(objects, all_pods))
            ref_program = time.perf_counter() - start

            policy_change, label_change = [], []
            for k in range(changes):
                i = rng.randrange(count)
                changed = policy(i)
                changed.spec.ingress[0].ports[0].port = 2000 + k
                t0 = time.perf_counter()
                engine.set_policy(f"{changed.metadata.namespace}/{changed.metadata.name}", compile_policy(changed))
                tables.update(mine.netns, engine.flush())
                policy_change.append(time.perf_counter() - t0)
                victim = all_pods[rng.randrange(2, PODS)]
                relabelled = PodInfo(victim.uid, victim.ip, victim.namespace,
                                     frozenset({("app", f"app{rng.randrange(APPS)}")}), victim.ports)  # fmt: skip
                t0 = time.perf_counter()
                engine.set_pod(relabelled, victim.uid)
                tables.update(mine.netns, engine.flush())
                label_change.append(time.perf_counter() - t0)
            repaired = tables.ensure(mine.netns, engine.state())
            assert repaired == [], f"the incremental changes left the table as wanted: {repaired}"

            for r in (none, mine, ref):
                for _ in range(50):  # warm: ARP, the server's accept loop
                    r.connect()
                r.connect_us.clear()
            order = [none, mine, ref]
            for n in range(connects):
                for r in order[n % 3 :] + order[: n % 3]:  # each goes first as often
                    r.connect()
        finally:
            tables.close()
        return {
            "elements": f"{elements}",
            "program": f"{program * 1000:.0f} ms ({computed * 1000:.0f} computing)",
            "ref_program": f"{ref_program * 1000:.0f} ms",
            "policy": f"{percentile(policy_change, 0.5) * 1000:.2f} / {percentile(policy_change, 0.99) * 1000:.2f} ms",
            "label": f"{percentile(label_change, 0.5) * 1000:.2f} / {percentile(label_change, 0.99) * 1000:.2f} ms",
            "connect": " / ".join(f"{statistics.median(r.connect_us):.0f}" for r in (none, mine, ref)),
            "connect99": " / ".join(f"{percentile(r.connect_us, 0.99):.0f}" for r in (none, mine, ref)),
            "ratio": " / ".join(
                f"{statistics.median(r.connect_us) / statistics.median(none.connect_us):.2f}x" for r in (mine, ref)
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {size: run_size(size, args.connects, args.changes) for size in sizes}
    print(f"{PODS} pods in {NAMESPACES} namespaces; policies as in bench/netpol.py; {args.connects} TCP connects per "
          f"router, {args.changes} changes of each kind; times p50 / p99")  # fmt: skip
    labels = [
        ("map elements (pinet)", "elements"),
        ("program all from empty: pinet", "program"),
        ("program all from empty: reference", "ref_program"),
        ("one policy change (pinet)", "policy"),
        ("one pod-label change (pinet)", "label"),
        ("connect p50 µs: none / pinet / ref", "connect"),
        ("connect p99 µs: none / pinet / ref", "connect99"),
        ("connect p50 vs none: pinet / ref", "ratio"),
    ]
    width = max(len(label) for label, _ in labels) + 2
    print(f"{'':<{width}}" + "".join(f"{f'{s} policies':>28}" for s in sizes))
    for label, key in labels:
        print(f"{label:<{width}}" + "".join(f"{rows[s][key]:>28}" for s in sizes))


if __name__ == "__main__":
    main()
