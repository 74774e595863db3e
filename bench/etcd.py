"""Informer event throughput beside the raw etcd transaction rate.

This is the reference that later throughput figures (IPAM, endpoints, lb,
DNS) are compared to: what one Python process can push through etcd here.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import raw_txn_rate, throwaway_etcd
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, Informer


def identity(value: bytes) -> bytes:
    return value


async def informer_live(etcd: Etcd, writes: int, concurrency: int) -> tuple[float, float]:
    """Events/s an informer delivers while writers run, and the write rate."""
    prefix = b"/bench/live/"
    informer = Informer(etcd, prefix, identity)
    seen = 0

    def count(_: Event[bytes]) -> None:
        nonlocal seen
        seen += 1

    informer.subscribe(count)
    informer.start()
    await informer.wait_synced()
    counter = iter(range(writes))
    last_revision = 0

    async def writer() -> None:
        nonlocal last_revision
        for i in counter:
            revision = await etcd.put(prefix + f"k{i % 1000}".encode(), b"v" * 64)
            last_revision = max(last_revision, revision)

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    written = time.perf_counter() - start
    await informer.wait_revision(last_revision)
    delivered = time.perf_counter() - start
    await informer.stop()
    assert seen == writes, f"informer saw {seen} of {writes} events"
    return writes / delivered, writes / written


async def informer_catch_up(etcd: Etcd, writes: int) -> float:
    """Events/s an informer processes when it resumes behind a backlog."""
    prefix = b"/bench/backlog/"
    start_revision = await etcd.current_revision()
    payload = b"v" * 64
    for base in range(0, writes, 1000):
        await asyncio.gather(
            *(etcd.put(prefix + f"k{i}".encode(), payload) for i in range(base, min(base + 1000, writes)))
        )
    head = await etcd.current_revision()
    informer = Informer(etcd, prefix, identity)
    informer.revision = start_revision  # resume as if it had been away
    informer._synced.set()
    seen = 0

    def count(_: Event[bytes]) -> None:
        nonlocal seen
        seen += 1

    informer.subscribe(count)
    t0 = time.perf_counter()
    task = asyncio.create_task(informer._watch())
    await informer.wait_revision(head)
    elapsed = time.perf_counter() - t0
    task.cancel()
    assert seen == writes
    return writes / elapsed


async def main(writes: int) -> None:
    with throwaway_etcd() as server:
        etcd = await Etcd(server.endpoint).connect()
        print(f"etcd {server.endpoint}, {writes} operations per figure\n")
        print(f"{'measure':44} {'rate':>12}")
        for c in (1, 16, 64):
            rate = await raw_txn_rate(etcd, c, writes, f"c{c}")
            print(f"{f'raw etcd txn (create-if-absent), {c:2d} clients':44} {rate.summary()}")
        live, write_rate = await informer_live(etcd, writes, 64)
        print(f"{'put rate, 64 clients':44} {write_rate:9.0f}/s")
        print(f"{'informer events delivered while writing':44} {live:9.0f}/s")
        backlog = await informer_catch_up(etcd, writes)
        print(f"{'informer catch-up over a backlog':44} {backlog:9.0f}/s")
        await etcd.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().writes))
