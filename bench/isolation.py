"""What the isolation costs: pod-to-pod TCP connect latency and request
rate across two simulated hosts, and pod attach latency, with the agents'
fences on and with them off (--unsafe-no-isolation). Two labs run side by
side (each its own etcd, ipam, network and two hosts with agents) and are
measured in short interleaved rounds, so that the machine's drift moves
both alike; every round's ratio is printed, so the noise shows too."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from bench.common import percentile, start_service, throwaway_etcd
from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc
from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.devstack.hosts import SimulatedHosts
from pinet.hostnet.netns import entered

if TYPE_CHECKING:
    from pinet.api.network.v1.network_pb2_grpc import NetworkServiceAsyncStub as Api

SERVER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(512)
def serve(c):
    with c:
        while data := c.recv(64):
            c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
PORT = 9000


def socket_in(netns: str) -> socket.socket:
    """A TCP socket of netns: it stays there whatever thread uses it."""
    with entered(netns):
        sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def paired_traffic(labs: list[Lab], connects: int, seconds: float) -> None:
    """Connects and requests, alternating between the labs one at a time
    from this one thread, so that each pair meets the same machine."""
    for _ in range(connects):
        for lab in labs:
            sock = socket_in(lab.client_ns)
            t0 = time.perf_counter()
            sock.connect((lab.server_ip, PORT))
            lab.samples.connect_us.append((time.perf_counter() - t0) * 1e6)
            sock.close()
    conns = []
    for lab in labs:
        sock = socket_in(lab.client_ns)
        sock.connect((lab.server_ip, PORT))
        conns.append(sock)
    counts = [0] * len(labs)
    spent = [0.0] * len(labs)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i, sock in enumerate(conns):
            t0 = time.perf_counter()
            sock.sendall(b"x" * 32)
            sock.recv(64)
            spent[i] += time.perf_counter() - t0
            counts[i] += 1
    for lab, sock, n, busy in zip(labs, conns, counts, spent, strict=True):
        sock.close()
        lab.samples.rr.append(n / busy)


@dataclass
class Samples:
    connect_us: list[float] = field(default_factory=list)
    rr: list[float] = field(default_factory=list)
    attach_ms: list[float] = field(default_factory=list)
    round_connect: list[float] = field(default_factory=list)  # per-round p50


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def in_netns(netns: str, script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", script])


async def wait_ready(api: Api, md: tuple[tuple[str, str], ...], name: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        pod = await api.GetPod(network_pb2.ObjectRef(name=name), metadata=md)
        if pod.status.ready:
            return str(pod.status.netns).rsplit("/", 1)[1]
        assert time.monotonic() < deadline, f"pod {name} not ready: {pod.status.message}"
        await asyncio.sleep(0.05)


class Lab:
    """Two simulated hosts with their own etcd, ipam, network and agents,
    a server pod on host 2 and a client pod on host 1."""

    def __init__(self, isolated: bool) -> None:
        self.isolated = isolated
        self.hosts = SimulatedHosts(f"b{uuid.uuid4().hex[:4]}", 2)
        self.samples = Samples()
        self.stack = contextlib.AsyncExitStack()
        self.procs: list[asyncio.subprocess.Process] = []
        self.attached = 0

    async def start(self) -> Lab:
        await asyncio.to_thread(self.hosts.setup)
        self.stack.push_async_callback(asyncio.to_thread, self.hosts.teardown)
        server = self.stack.enter_context(throwaway_etcd())
        state = self.stack.enter_context(tempfile.TemporaryDirectory())
        self.stack.push_async_callback(self._stop_procs)  # before etcd stops
        _, ipam_addr = await self._start("ipam", server.endpoint, "--gc-interval", "0", "--floating-ranges", "")
        _, net_addr = await self._start("network", server.endpoint, "--ipam", ipam_addr, "--bootstrap-dir", state)
        extra = [] if self.isolated else ["--unsafe-no-isolation"]
        for n in (1, 2):
            node = self.hosts.host(n)
            args = ["--node-name", node, "--host-netns", node, "--underlay-ip", self.hosts.underlay_ip(n), *extra]
            _, address = await self._start("netagent", server.endpoint, *args)
            if n == 1:
                self.agent_address = address
        self.md = (("authorization", f"Bearer {(Path(state) / 'token').read_text().strip()}"),)
        channel = grpc.aio.insecure_channel(net_addr)
        self.stack.push_async_callback(channel.close, None)
        self.api: Api = network_pb2_grpc.NetworkServiceStub(channel)
        netns = {}
        for name, n in (("server", 2), ("client", 1)):
            await self.api.CreatePod(network_pb2.CreatePodRequest(pod=self._pod(name, n)), metadata=self.md)
            netns[name] = await wait_ready(self.api, self.md, name)
        self.client_ns = netns["client"]
        server_pod = await self.api.GetPod(network_pb2.ObjectRef(name="server"), metadata=self.md)
        self.server_ip = server_pod.status.pod_ip
        server_proc = in_netns(netns["server"], SERVER)
        self.stack.callback(server_proc.kill)
        await asyncio.sleep(0.5)
        return self

    async def _start(self, module: str, *args: str) -> tuple[asyncio.subprocess.Process, str]:
        proc, address = await start_service(module, *args)
        self.procs.append(proc)
        return proc, address

    async def _stop_procs(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            await proc.wait()

    def _pod(self, name: str, n: int, runtime: bool = False) -> objects_pb2.Pod:
        pod = objects_pb2.Pod()
        pod.metadata.name = name
        if runtime:
            pod.metadata.annotations["pinet.io/netns"] = "runtime"
        pod.spec.node_name = self.hosts.host(n)
        pod.spec.containers.add(name="c", image="x")
        return pod

    async def attach(self, count: int) -> None:
        """count runtime-managed pods on host 1, one after another."""
        node = self.hosts.host(1)
        names = [f"rt{self.attached + i}" for i in range(count)]
        self.attached += count
        for name in names:
            await self.api.CreatePod(network_pb2.CreatePodRequest(pod=self._pod(name, 1, True)), metadata=self.md)
            ip("netns", "add", f"{node}-{name}")
            self.stack.callback(ip, "netns", "del", f"{node}-{name}", check=False)
        await asyncio.sleep(1)  # the agent's informer has them all
        async with grpc.aio.insecure_channel(self.agent_address) as channel:
            agent_api = netagent_pb2_grpc.AgentServiceStub(channel)
            for name in names:
                ref = netagent_pb2.PodRef(tenant="default", namespace="default", name=name)
                t0 = time.perf_counter()
                await agent_api.Attach(netagent_pb2.AttachRequest(pod=ref, netns_path=f"/run/netns/{node}-{name}"))
                self.samples.attach_ms.append((time.perf_counter() - t0) * 1000)

    async def close(self) -> None:
        await self.stack.aclose()


async def main(rounds: int, connects: int, seconds: float, attaches: int) -> None:
    labs = {}
    try:
        for isolated in (True, False):
            labs[isolated] = await Lab(isolated).start()
        for r in range(rounds):
            order = [labs[True], labs[False]] if r % 2 == 0 else [labs[False], labs[True]]
            before = [len(lab.samples.connect_us) for lab in order]
            await asyncio.to_thread(paired_traffic, order, connects, seconds)
            for lab, start in zip(order, before, strict=True):
                lab.samples.round_connect.append(statistics.median(lab.samples.connect_us[start:]))
            for lab in order:
                await lab.attach(attaches)
        on, off = labs[True].samples, labs[False].samples
        print(f"{rounds} rounds; per round {connects} TCP connects and {seconds:.0f} s of request/response (32 bytes,")
        print("one connection) from a pod on host 1 to a pod on host 2, alternating between the labs one connect")
        print(f"and one request at a time, then {attaches} pods attached one after another on host 1 of each\n")
        print(f"{'':32} {'fences on':>12} {'fences off':>12} {'on/off':>7}   per round")
        rows = [
            ("connect p50 (µs)", statistics.median(on.connect_us), statistics.median(off.connect_us), False,
             on.round_connect, off.round_connect),
            ("connect p99 (µs)", percentile(on.connect_us, 0.99), percentile(off.connect_us, 0.99), False, [], []),
            ("requests/s (median of rounds)", statistics.median(on.rr), statistics.median(off.rr), True, on.rr,
             off.rr),
            ("attach p50 (ms)", statistics.median(on.attach_ms), statistics.median(off.attach_ms), False, [], []),
            ("attach p99 (ms)", percentile(on.attach_ms, 0.99), percentile(off.attach_ms, 0.99), False, [], []),
        ]  # fmt: skip
        for label, a, b, higher_is_better, per_on, per_off in rows:
            # Every ratio reads "how the fenced platform does": above 1 is better.
            ratio = a / b if higher_is_better else b / a
            rounds_text = " ".join(
                f"{(x / y if higher_is_better else y / x):.2f}" for x, y in zip(per_on, per_off, strict=True)
            )
            print(f"{label:32} {a:12.1f} {b:12.1f} {ratio:7.2f}   {rounds_text}")
    finally:
        for lab in labs.values():
            await lab.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--connects", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--attaches", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.connects, args.seconds, args.attaches))
