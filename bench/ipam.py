"""IPAM allocation throughput and latency through gRPC, beside raw etcd
transactions at the same concurrency on the same machine, and beside an
Allocate that does nothing (bench/empty_ipam.py: what any Python gRPC
service reaches here, pinet's work or not).

The three are measured in alternating rounds, so that the machine changing
speed during a run (a shared VM does, by tens of percent) moves all three
alike instead of favouring whichever ran first.

A second table gives the CPU time each process spent per operation. The
client, ipam and etcd share the machine's cores, so when the cores are the
limit the rates stand in the inverse ratio of these totals.

A third puts the ipam as the platform runs it (mTLS from its caller, TLS
with a client certificate and RBAC to its own etcd) beside the same ipam
with --insecure on a plaintext etcd, in the same alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from bench.common import (
    BENCH_NODE,
    Rate,
    cpu_seconds,
    raw_txn_rate,
    run_concurrent,
    start_service,
    throwaway_etcd,
)
from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.devstack.etcd import free_port
from pinet.etcd.client import Etcd
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles, aio_channel

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub

CONCURRENCY = (1, 16, 64)


def allocate_request(tenant: str, i: int) -> ipam_pb2.AllocateRequest:
    owner = ipam_pb2.Owner(tenant=tenant, kind=ipam_pb2.OWNER_KIND_POD, handle=f"pod-{i}")
    return ipam_pb2.AllocateRequest(pool=f"{tenant}.default.pod", owner=owner)


async def allocate_rate(stub: IpamServiceAsyncStub, concurrency: int, first: int, count: int, tenant: str) -> Rate:
    async def op(i: int) -> None:
        await stub.Allocate(allocate_request(tenant, first + i))

    return await run_concurrent(concurrency, count, op)


async def start_empty_ipam() -> tuple[asyncio.subprocess.Process, str]:
    address = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.empty_ipam", "--listen", address)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ipam_pb2_grpc.IpamServiceStub(channel)
        for _ in range(300):
            try:
                await stub.Allocate(allocate_request("warmup", 0), timeout=1)
                return proc, address
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the empty IpamService did not start")


@dataclass
class CpuUse:
    """CPU seconds spent by each process over the rounds of one system."""

    seconds: dict[str, float] = field(default_factory=dict)
    ops: int = 0

    async def measure(self, pids: dict[str, int | None], rate: Awaitable[Rate]) -> Rate:
        """pids: name -> process (None: this one, the client)."""
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result = await rate
        for name, pid in pids.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + cpu_seconds(pid) - before[name]
        self.ops += result.ops
        return result

    def summary(self) -> str:
        parts = [f"{name} {1e6 * spent / self.ops:.0f}" for name, spent in self.seconds.items()]
        return f"{' + '.join(parts)} = {self.total():.0f}"

    def total(self) -> float:
        return 1e6 * sum(self.seconds.values()) / self.ops if self.ops else 0.0


def merged(rates: list[Rate]) -> Rate:
    return Rate(sum(r.ops for r in rates), sum(r.seconds for r in rates), [lat for r in rates for lat in r.latencies])


async def main(total: int, rounds: int) -> None:
    with throwaway_etcd() as server, throwaway_etcd(secure=True) as secure_server:
        etcd = await Etcd(server.endpoint).connect()
        procs: list[asyncio.subprocess.Process] = []
        try:
            ipam_proc, ipam_address = await start_service(
                "ipam", server.endpoint, "--gc-interval", "0", "--floating-ranges", ""
            )
            procs.append(ipam_proc)
            empty_proc, empty_address = await start_empty_ipam()
            procs.append(empty_proc)
            assert secure_server.pki is not None
            await secure_server.grant_roles([BENCH_NODE])
            tls_proc, tls_address = await start_service(
                "ipam", secure_server.endpoint, "--gc-interval", "0", "--floating-ranges", "", pki=secure_server.pki
            )
            procs.append(tls_proc)
            caller = Tls(TlsFiles.in_directory(secure_server.pki, Identity("network")), Identity("network"))
            async with (
                grpc.aio.insecure_channel(ipam_address) as ipam_channel,
                grpc.aio.insecure_channel(empty_address) as empty_channel,
                aio_channel(caller, tls_address, Identity("ipam")) as tls_channel,
            ):
                ipam = ipam_pb2_grpc.IpamServiceStub(ipam_channel)
                empty = ipam_pb2_grpc.IpamServiceStub(empty_channel)
                secure = ipam_pb2_grpc.IpamServiceStub(tls_channel)
                print(
                    f"{total} allocations per row (a quarter at 1 client) in {rounds} alternating rounds; "
                    f"one ipam process; etcd {server.endpoint}; {os.cpu_count()} cores\n"
                )
                print(
                    f"{'clients':>7}  {'pinet Allocate (gRPC)':^42}  {'raw etcd txn':^42}  {'ratio (rounds)':^16}"
                    f"  {'empty Allocate (gRPC)':^42}  {'pinet/empty':>11}"
                )
                await ipam.EnsureNetworkPools(ipam_pb2.EnsureNetworkPoolsRequest(tenant="warmup"))
                await allocate_rate(ipam, 16, 0, 500, "warmup")
                await allocate_rate(empty, 16, 0, 500, "warmup")
                await raw_txn_rate(etcd, 16, 500, "warmup")
                await secure.EnsureNetworkPools(ipam_pb2.EnsureNetworkPoolsRequest(tenant="warmup"))
                await allocate_rate(secure, 16, 0, 500, "warmup")
                assert server.proc is not None and ipam_proc.pid and empty_proc.pid
                etcd_pid = server.proc.pid
                cpu_rows: list[str] = []
                tls_rows: list[str] = []
                for concurrency in CONCURRENCY:
                    tenant = f"bench{concurrency}"
                    await ipam.EnsureNetworkPools(ipam_pb2.EnsureNetworkPoolsRequest(tenant=tenant))
                    await secure.EnsureNetworkPools(ipam_pb2.EnsureNetworkPoolsRequest(tenant=tenant))
                    per_round = (total if concurrency > 1 else total // 4) // rounds
                    pinet_rounds: list[Rate] = []
                    raw_rounds: list[Rate] = []
                    empty_rounds: list[Rate] = []
                    tls_rounds: list[Rate] = []
                    pinet_cpu, raw_cpu, empty_cpu = CpuUse(), CpuUse(), CpuUse()
                    for r in range(rounds):
                        first = r * per_round
                        pinet_rounds.append(
                            await pinet_cpu.measure(
                                {"client": None, "ipam": ipam_proc.pid, "etcd": etcd_pid},
                                allocate_rate(ipam, concurrency, first, per_round, tenant),
                            )
                        )
                        raw_rounds.append(
                            await raw_cpu.measure(
                                {"client": None, "etcd": etcd_pid},
                                raw_txn_rate(etcd, concurrency, per_round, f"c{concurrency}r{r}"),
                            )
                        )
                        empty_rounds.append(
                            await empty_cpu.measure(
                                {"client": None, "server": empty_proc.pid},
                                allocate_rate(empty, concurrency, first, per_round, tenant),
                            )
                        )
                        tls_rounds.append(await allocate_rate(secure, concurrency, first, per_round, tenant))
                    pinet, raw, noop = merged(pinet_rounds), merged(raw_rounds), merged(empty_rounds)
                    ratios = [p.per_second / w.per_second for p, w in zip(pinet_rounds, raw_rounds, strict=True)]
                    spread = f"{pinet.per_second / raw.per_second:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                    print(
                        f"{concurrency:>7}  {pinet.summary():>42}  {raw.summary():>42}  {spread:^16}"
                        f"  {noop.summary():>42}  {pinet.per_second / noop.per_second:11.2f}"
                    )
                    secured = merged(tls_rounds)
                    tls_ratios = [t.per_second / p.per_second for t, p in zip(tls_rounds, pinet_rounds, strict=True)]
                    tls_rows.append(
                        f"{concurrency:>7}  {pinet.summary():>42}  {secured.summary():>42}"
                        f"  {secured.per_second / pinet.per_second:.2f} ({min(tls_ratios):.2f}-{max(tls_ratios):.2f})"
                    )
                    cpu_rows.append(
                        f"{concurrency:>7}  {pinet_cpu.summary():^34}  {raw_cpu.summary():^24}"
                        f"  {raw_cpu.total() / pinet_cpu.total():^9.2f}  {empty_cpu.summary():^26}"
                    )
                print("\nCPU per operation, µs (client: this process; the processes share the cores):\n")
                print(f"{'clients':>7}  {'pinet':^34}  {'raw etcd txn':^24}  {'raw/pinet':^9}  {'empty Allocate':^26}")
                print("\n".join(cpu_rows))
                print("\nTLS (mTLS to the ipam; its etcd with TLS, client certificates and RBAC) beside --insecure:\n")
                print(f"{'clients':>7}  {'plaintext':^42}  {'TLS':^42}  TLS/plaintext (rounds)")
                print("\n".join(tls_rows))
                print("target: TLS costs at most 15% (a ratio of 0.85 or more)")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
            await etcd.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allocations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.allocations, args.rounds))
