"""Time from a pod change in etcd to the matching Endpoints change, with
1,000 services (one pod each) in the view of the endpoints controller."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import start_service, throwaway_etcd
from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import ENDPOINTS, PODS
from pinet.objects.podnetwork import set_network_ready
from pinet.objects.store import update
from services.netagent.registration import NodeRegistration


async def main(services: int, samples: int) -> None:
    with throwaway_etcd() as server, tempfile.TemporaryDirectory() as state:
        etcd = await Etcd(server.endpoint).connect()
        ipam, ipam_addr = await start_service("ipam", server.endpoint, "--gc-interval", "0", "--floating-ranges", "")
        net, net_addr = await start_service("network", server.endpoint, "--ipam", ipam_addr, "--bootstrap-dir", state)
        registrations = [
            NodeRegistration(etcd, objects_pb2.Node(name=f"bench-{i}", underlay_ip=f"192.0.2.{i}")) for i in (1, 2)
        ]
        for reg in registrations:
            await reg.start()
        token = (Path(state) / "token").read_text().strip()
        md = (("authorization", f"Bearer {token}"),)
        try:
            async with grpc.aio.insecure_channel(net_addr) as channel:
                api = network_pb2_grpc.NetworkServiceStub(channel)
                t0 = time.perf_counter()
                sem = asyncio.Semaphore(16)

                async def make(i: int) -> None:
                    async with sem:
                        svc = objects_pb2.Service()
                        svc.metadata.name = f"svc-{i}"
                        svc.spec.selector["app"] = f"app-{i}"
                        svc.spec.ports.add(port=80)
                        await api.CreateService(network_pb2.CreateServiceRequest(service=svc), metadata=md)
                        pod = objects_pb2.Pod()
                        pod.metadata.name = f"pod-{i}"
                        pod.metadata.labels["app"] = f"app-{i}"
                        pod.spec.containers.add(name="c", image="x")
                        made = await api.CreatePod(network_pb2.CreatePodRequest(pod=pod), metadata=md)
                        await set_network_ready(etcd, "default", "default", made.metadata.name, made.metadata.uid, True)

                await asyncio.gather(*(make(i) for i in range(services)))
                setup = time.perf_counter() - t0
                # Wait until every service has its endpoint.
                for _ in range(600):
                    if await etcd.count_prefix(ENDPOINTS.scope_prefix("default", "default")) >= services:
                        break
                    await asyncio.sleep(0.1)
                changed: dict[bytes, asyncio.Future[float]] = {}
                head = await etcd.current_revision()

                async def follow() -> None:
                    async for batch in etcd.watch(ENDPOINTS.scope_prefix("default", "default"), head + 1):
                        now = time.perf_counter()
                        for ev in batch.events:
                            fut = changed.pop(ev.kv.key, None)
                            if fut is not None and not fut.done():
                                fut.set_result(now)

                watcher = asyncio.create_task(follow())
                await asyncio.sleep(0.2)
                latencies = []
                for n in range(samples):
                    i = n % services
                    key = PODS.key("default", "default", f"pod-{i}")
                    fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                    changed[ENDPOINTS.key("default", "default", f"svc-{i}")] = fut
                    value = "elsewhere" if (n // services) % 2 == 0 else f"app-{i}"

                    def relabel(pod: objects_pb2.Pod, v: str = value) -> bool:
                        pod.metadata.labels["app"] = v
                        return True

                    await update(etcd, PODS, key, relabel)
                    written = time.perf_counter()
                    latencies.append(await asyncio.wait_for(fut, 10) - written)
                    await asyncio.sleep(0.01)
                watcher.cancel()
        finally:
            for reg in registrations:
                await reg.stop()
            for p in (net, ipam):
                p.terminate()
                await p.wait()
            await etcd.close()
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
    print(f"{services} services with one pod each (created in {setup:.1f}s); {samples} pod relabels")
    print(
        f"pod change in etcd -> Endpoints change in etcd: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )
    print("target: within 100 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.samples))
