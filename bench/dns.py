"""dnsperf against pinet's DNS and against unbound (one thread, the same
10,000 service records as local data), side by side, answers checked; and
the time from a service write in etcd to the first correct answer."""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query

from bench.common import throwaway_etcd
from pinet.api.network.v1 import objects_pb2
from pinet.devstack.etcd import free_port
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import SERVICES
from pinet.etcd.txn import op_put
from pinet.runtime.probe import wait_serving

ZONE = "cluster.local"


def service_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def service(i: int, ip: str) -> objects_pb2.Service:
    svc = objects_pb2.Service()
    svc.metadata.name, svc.metadata.namespace, svc.metadata.tenant = f"svc-{i}", "default", "default"
    svc.spec.type = objects_pb2.SERVICE_TYPE_CLUSTER_IP
    svc.spec.cluster_ip = ip
    svc.spec.ports.add(port=80)
    return svc


def ask(port: int, name: str, timeout: float = 2) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=timeout)
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def dnsperf(port: int, queries: Path, seconds: int) -> tuple[float, float, str]:
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds), "-c", "1", "-T", "1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out.stdout)[1])  # type: ignore[index]
    latency = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out.stdout)[1])  # type: ignore[index]
    lost = re.search(r"Queries lost:\s+(\d+ \([\d.]+%\))", out.stdout)
    return qps, latency * 1000, lost[1] if lost else "?"


def unbound_config(directory: Path, port: int, count: int) -> Path:
    lines = [
        "server:", f"  interface: 127.0.0.1@{port}", "  num-threads: 1", "  do-daemonize: no", "  username: \"\"",
        "  chroot: \"\"", f"  directory: \"{directory}\"", f"  pidfile: \"{directory}/unbound.pid\"",
        "  access-control: 127.0.0.0/8 allow", "  verbosity: 0", "  use-syslog: no", "  do-ip6: no",
        f"  local-zone: \"{ZONE}.\" static",
    ]  # fmt: skip
    lines += [f'  local-data: "svc-{i}.default.svc.{ZONE}. 5 IN A {service_ip(i)}"' for i in range(count)]
    path = directory / "unbound.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def require_tools() -> None:
    for tool in ("dnsperf", "unbound"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed (scripts/bench-dns installs it)")


async def main(count: int, seconds: int, samples: int) -> None:
    with throwaway_etcd() as server, tempfile.TemporaryDirectory() as tmp:
        etcd = await Etcd(server.endpoint).connect()
        for base in range(0, count, 100):
            ops = [
                op_put(SERVICES.key("default", "default", f"svc-{i}"), SERVICES.encode(service(i, service_ip(i))))
                for i in range(base, min(base + 100, count))
            ]
            await etcd.txn([], ops)
        dns_port, grpc_address = free_port(), f"127.0.0.1:{free_port()}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.dns", "--etcd", server.endpoint, "--listen", grpc_address,
            "--dns-listen", f"127.0.0.1:{dns_port}", "--dns-tenant", "default", "--log-level", "warning",
        )  # fmt: skip
        unbound_port = free_port()
        config = await asyncio.to_thread(unbound_config, Path(tmp), unbound_port, count)
        unbound = await asyncio.create_subprocess_exec(
            shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c", str(config)
        )
        try:
            await wait_serving(grpc_address, 60)
            for port in (dns_port, unbound_port):
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if await asyncio.to_thread(ask, port, f"svc-{count - 1}.default.svc.{ZONE}", 0.5):
                            break
                    except dns.exception.Timeout:
                        pass
                    assert time.monotonic() < deadline, f"nothing answers on {port}"
            # Answers are checked on a sample before anything is timed.
            for i in random.sample(range(count), 200):
                name = f"svc-{i}.default.svc.{ZONE}"
                assert await asyncio.to_thread(ask, dns_port, name) == [service_ip(i)], name
                assert await asyncio.to_thread(ask, unbound_port, name) == [service_ip(i)], name
            queries = Path(tmp) / "queries"
            order = list(range(count))
            random.shuffle(order)
            await asyncio.to_thread(queries.write_text, "".join(f"svc-{i}.default.svc.{ZONE} A\n" for i in order))
            pinet_qps, pinet_ms, pinet_lost = await asyncio.to_thread(dnsperf, dns_port, queries, seconds)
            unbound_qps, unbound_ms, unbound_lost = await asyncio.to_thread(dnsperf, unbound_port, queries, seconds)

            # Freshness: a service changes in etcd; how long until DNS says so?
            fresh = []
            for n in range(samples):
                i = random.randrange(count)
                new_ip = f"10.200.{n // 256}.{n % 256}"
                name = f"svc-{i}.default.svc.{ZONE}"
                await etcd.put(SERVICES.key("default", "default", f"svc-{i}"), SERVICES.encode(service(i, new_ip)))
                written = time.perf_counter()
                while await asyncio.to_thread(ask, dns_port, name) != [new_ip]:
                    pass
                fresh.append(time.perf_counter() - written)
        finally:
            proc.terminate()
            await proc.wait()
            unbound.terminate()
            await unbound.wait()
            await etcd.close()
    ordered = sorted(fresh)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
    print(f"{count} services in the view; dnsperf -c 1 -T 1 for {seconds}s over {count} names in random order\n")
    print(f"{'server':28} {'queries/s':>10} {'avg latency':>12} {'lost':>12}")
    print(f"{'pinet dns (one process)':28} {pinet_qps:10.0f} {pinet_ms:9.3f} ms {pinet_lost:>12}")
    print(f"{'unbound (num-threads: 1)':28} {unbound_qps:10.0f} {unbound_ms:9.3f} ms {unbound_lost:>12}")
    print(f"\nratio pinet/unbound: {pinet_qps / unbound_qps:.2f} (target 0.8)")
    print(
        f"service write in etcd -> first correct answer, {samples} writes: "
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99:.1f} ms (target p99 100 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    require_tools()
    asyncio.run(main(args.services, args.seconds, args.samples))
