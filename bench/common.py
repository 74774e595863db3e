"""Shared pieces of the benchmark scripts: a throwaway etcd and timing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pinet.devstack.etcd import EtcdServer, free_port
from pinet.etcd.client import Etcd
from pinet.etcd.txn import key_missing, op_put
from pinet.pki import authority
from pinet.pki.identity import Identity, cluster_identities
from pinet.runtime.probe import wait_serving
from pinet.runtime.tls import Tls, TlsFiles

BENCH_NODE = "bench-node"


@contextlib.contextmanager
def throwaway_etcd(secure: bool = False) -> Iterator[EtcdServer]:
    """A fresh etcd: plaintext, or with secure as the platform runs it (TLS,
    client certificates; await server.grant_roles([BENCH_NODE]) next), its
    PKI in server.pki."""
    with tempfile.TemporaryDirectory(prefix="pinet-bench-") as tmp:
        pki = None
        if secure:
            pki = Path(tmp) / "pki"
            authority.ensure(pki, cluster_identities([BENCH_NODE]))
        server = EtcdServer(Path(tmp) / "etcd", pki=pki)
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def start_service(
    module: str, endpoint: str, *extra: str, pki: Path | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """A pinet service as a child process on a free port, once it is
    SERVING: with its certificate from pki, or plaintext (--insecure)."""
    address = f"127.0.0.1:{free_port()}"
    tls = ["--tls-dir", str(pki), "--node-name", BENCH_NODE] if pki is not None else ["--insecure"]
    if module == "netagent" and "--cni-socket" not in extra:
        tls += ["--cni-socket", ""]  # the benchmarks attach over gRPC, and may run two agents
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{module}", "--etcd", endpoint, "--listen", address,
        "--log-level", "warning", *tls, *extra,
    )  # fmt: skip
    probe = None if pki is None else Tls(TlsFiles.in_directory(pki, Identity("monitor")), Identity("monitor"))
    await wait_serving(address, 60, tls=probe, peer=Identity.for_service(module, BENCH_NODE))
    return proc, address


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction q of values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Rate:
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        return percentile(self.latencies, q) * 1000

    def summary(self) -> str:
        return f"{self.per_second:9.0f}/s  p50 {self.pct(0.5):6.2f} ms  p99 {self.pct(0.99):6.2f} ms"


async def run_concurrent(concurrency: int, total: int, op: Callable[[int], Awaitable[None]]) -> Rate:
    """Run op(i) for i in range(total) with `concurrency` workers."""
    counter = iter(range(total))
    latencies: list[float] = []

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Rate(total, time.perf_counter() - start, latencies)


async def raw_txn_rate(etcd: Etcd, concurrency: int, total: int, tag: str) -> Rate:
    """The reference: create-if-absent transactions straight to etcd, one
    per operation, from this process's etcd client."""

    async def op(i: int) -> None:
        key = f"/bench/raw/{tag}/{i}".encode()
        await etcd.txn([key_missing(key)], [op_put(key, b"x" * 64)])

    return await run_concurrent(concurrency, total, op)


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time of a process (all its threads) so far;
    None: this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        # The fields after the command name, which may itself hold spaces.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
