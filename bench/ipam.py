"""IPAM allocation throughput and latency through gRPC, beside raw etcd
transactions at the same concurrency on the same machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import TYPE_CHECKING

import grpc

from bench.common import Rate, raw_txn_rate, run_concurrent, start_service, throwaway_etcd
from pinet.etcd.client import Etcd
from pinet.ipam.v1 import ipam_pb2, ipam_pb2_grpc

if TYPE_CHECKING:
    from pinet.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub


async def ipam_rate(stub: IpamServiceAsyncStub, concurrency: int, total: int, tenant: str) -> Rate:
    await stub.EnsureNetworkPools(ipam_pb2.EnsureNetworkPoolsRequest(tenant=tenant))
    pool = f"{tenant}.default.pod"

    async def op(i: int) -> None:
        owner = ipam_pb2.Owner(tenant=tenant, kind=ipam_pb2.OWNER_KIND_POD, handle=f"pod-{i}")
        await stub.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=owner))

    return await run_concurrent(concurrency, total, op)


async def main(total: int) -> None:
    with throwaway_etcd() as server:
        etcd = await Etcd(server.endpoint).connect()
        proc, address = await start_service("ipam", server.endpoint, "--gc-interval", "0", "--floating-ranges", "")
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = ipam_pb2_grpc.IpamServiceStub(channel)
                print(
                    f"{total} allocations per row; one ipam process; etcd {server.endpoint}; {os.cpu_count()} cores\n"
                )
                print(f"{'clients':>7}  {'pinet Allocate (gRPC)':^42}  {'raw etcd txn':^42}  {'ratio':>5}")
                for concurrency in (1, 16, 64):
                    n = total if concurrency > 1 else total // 4
                    ipam = await ipam_rate(stub, concurrency, n, f"bench{concurrency}")
                    raw = await raw_txn_rate(etcd, concurrency, n, f"c{concurrency}")
                    ratio = ipam.per_second / raw.per_second
                    print(f"{concurrency:>7}  {ipam.summary():>42}  {raw.summary():>42}  {ratio:5.2f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
            await etcd.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allocations", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().allocations))
