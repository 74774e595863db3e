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
from pinet.etcd.client import Etcd, key_missing, op_put
from pinet.runtime.probe import wait_serving


@contextlib.contextmanager
def throwaway_etcd() -> Iterator[EtcdServer]:
    with tempfile.TemporaryDirectory(prefix="pinet-bench-") as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def start_service(module: str, endpoint: str, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    """A pinet service as a child process on a free port, once it is SERVING."""
    address = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"pinet.services.{module}", "--etcd", endpoint, "--listen", address,
        "--log-level", "warning", *extra,
    )  # fmt: skip
    await wait_serving(address, 60)
    return proc, address


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
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

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
