"""Pod attach latency and pods wired per second on one host, 200 pods, and
the agent's memory, beside the same wiring done with plain `ip` commands
(what a minimal bridge CNI plugin runs), measured the same way."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from bench.common import start_service, throwaway_etcd
from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc
from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.devstack.hosts import SimulatedHosts


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def summary(latencies: list[float], total: float) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms  {len(ordered) / total:6.1f} pods/s"
    )


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def reference(lab: SimulatedHosts, count: int) -> tuple[list[float], float]:
    """The same wiring with one `ip` command per step, into a bridge."""
    router = f"{lab.host(1)}-refr"
    ip("netns", "add", router)
    ip("-n", router, "link", "add", "br0", "type", "bridge")
    ip("-n", router, "addr", "add", "10.99.0.1/16", "dev", "br0")
    ip("-n", router, "link", "set", "br0", "up")
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        pod = f"{lab.host(1)}-refp{i}"
        address = f"10.99.{1 + i // 250}.{1 + i % 250}/16"
        ip("netns", "add", pod)
        ip("-n", router, "link", "add", f"rv{i}", "type", "veth", "peer", "name", "eth0", "netns", pod)
        ip("-n", router, "link", "set", f"rv{i}", "master", "br0", "mtu", "1450", "up")
        ip("-n", pod, "link", "set", "eth0", "mtu", "1450", "up")
        ip("-n", pod, "link", "set", "lo", "up")
        ip("-n", pod, "addr", "add", address, "dev", "eth0")
        ip("-n", pod, "route", "add", "default", "via", "10.99.0.1")
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - start


async def main(count: int) -> None:
    lab = SimulatedHosts(f"b{uuid.uuid4().hex[:4]}", 1)
    await asyncio.to_thread(lab.setup)
    procs = []
    try:
        with throwaway_etcd() as server, tempfile.TemporaryDirectory() as state:
            ipam, ipam_addr = await start_service(
                "ipam", server.endpoint, "--gc-interval", "0", "--floating-ranges", ""
            )
            net, net_addr = await start_service(
                "network", server.endpoint, "--ipam", ipam_addr, "--bootstrap-dir", state
            )
            node = lab.host(1)
            agent, agent_addr = await start_service(
                "netagent", server.endpoint, "--node-name", node, "--host-netns", node,
                "--underlay-ip", lab.underlay_ip(1),
            )  # fmt: skip
            procs = [agent, net, ipam]
            token = (Path(state) / "token").read_text().strip()
            md = (("authorization", f"Bearer {token}"),)
            async with grpc.aio.insecure_channel(net_addr) as nch, grpc.aio.insecure_channel(agent_addr) as ach:
                api = network_pb2_grpc.NetworkServiceStub(nch)
                agent_api = netagent_pb2_grpc.AgentServiceStub(ach)
                for i in range(count):
                    pod = objects_pb2.Pod()
                    pod.metadata.name = f"p{i}"
                    pod.metadata.annotations["pinet.io/netns"] = "runtime"
                    pod.spec.node_name = node
                    pod.spec.containers.add(name="c", image="x")
                    await api.CreatePod(network_pb2.CreatePodRequest(pod=pod), metadata=md)
                    ip("netns", "add", f"{node}-rt{i}")
                rss_before = rss_mib(agent.pid)
                latencies = []
                start_all = time.perf_counter()
                for i in range(count):
                    ref = netagent_pb2.PodRef(tenant="default", namespace="default", name=f"p{i}")
                    t0 = time.perf_counter()
                    await agent_api.Attach(netagent_pb2.AttachRequest(pod=ref, netns_path=f"/run/netns/{node}-rt{i}"))
                    latencies.append(time.perf_counter() - t0)
                total = time.perf_counter() - start_all
                rss_after = rss_mib(agent.pid)
            for p in procs:
                p.terminate()
                await p.wait()
            procs = []
            ref_latencies, ref_total = await asyncio.to_thread(reference, lab, count)
            print(f"{count} pods attached one after another on one host (bridge + veth + address + route)\n")
            print(f"{'pinet agent Attach (gRPC, pyroute2)':40} {summary(latencies, total)}")
            print(f"{'reference: plain ip commands':40} {summary(ref_latencies, ref_total)}")
            print(f"\nagent memory: {rss_before:.1f} MiB before, {rss_after:.1f} MiB with {count} pods wired")
    finally:
        for p in procs:
            p.terminate()
            await p.wait()
        await asyncio.to_thread(lab.teardown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=200)
    asyncio.run(main(parser.parse_args().pods))
