"""A little cloud for the dataplane tests: simulated hosts with their
agents (and, when asked, load balancers), ipam and network, and tenants."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.devstack.hosts import SimulatedHosts
from pinet.devstack.stack import cni_socket
from tests.helpers.platform import Tenant
from tests.helpers.procs import ServiceProcess


@dataclass
class Cloud:
    hosts: SimulatedHosts
    agents: dict[str, ServiceProcess]
    network: ServiceProcess
    ipam: ServiceProcess
    admin_token: str
    channel: grpc.aio.Channel
    etcd_endpoint: str
    tenants: dict[str, Tenant] = field(default_factory=dict)
    lbs: dict[str, ServiceProcess] = field(default_factory=dict)
    agent_args: list[str] = field(default_factory=list)
    dns: ServiceProcess | None = None

    async def tenant(self, name: str) -> Tenant:
        if name not in self.tenants:
            admin = network_pb2_grpc.AdminServiceStub(self.channel)
            resp = await admin.IssueToken(
                network_pb2.IssueTokenRequest(tenant=name), metadata=(("authorization", f"Bearer {self.admin_token}"),)
            )
            self.tenants[name] = Tenant(name, resp.token, network_pb2_grpc.NetworkServiceStub(self.channel))
        return self.tenants[name]

    async def start_agent(self, n: int) -> ServiceProcess:
        node = self.hosts.host(n)
        proc = await ServiceProcess(
            "netagent", self.etcd_endpoint,
            ["--node-name", node, "--host-netns", node, "--underlay-ip", self.hosts.underlay_ip(n),
             "--heartbeat-ttl", "3", "--resync-interval", "2", "--cni-socket", cni_socket(node), *self.agent_args],
            metrics=True,
        ).start()  # fmt: skip
        self.agents[node] = proc
        return proc

    async def start_lb(self, n: int, args: list[str]) -> ServiceProcess:
        node = self.hosts.host(n)
        proc = await ServiceProcess(
            "lb", self.etcd_endpoint, ["--node-name", node, "--host-netns", node, "--resync-interval", "5", *args]
        ).start()
        self.lbs[node] = proc
        return proc

    async def run_pod(self, t: Tenant, name: str, node: str, labels: dict[str, str] | None = None) -> objects_pb2.Pod:
        pod = objects_pb2.Pod()
        pod.metadata.name = name
        pod.metadata.labels.update(labels or {})
        pod.spec.node_name = node
        pod.spec.containers.add(name="c", image="busybox")
        created = await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod))
        return await self.wait_ready(t, name, created.metadata.uid)

    async def wait_ready(self, t: Tenant, name: str, uid: str = "", timeout: float = 15) -> objects_pb2.Pod:
        deadline = time.monotonic() + timeout
        while True:
            pod = await t.call("GetPod", network_pb2.ObjectRef(name=name))
            if pod.status.ready and (not uid or pod.metadata.uid == uid):
                return pod  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"pod {name} not ready: {pod.status.message}"
            await asyncio.sleep(0.05)

    def pod_netns(self, pod: objects_pb2.Pod) -> str:
        return Path(pod.status.netns).name

    def in_pod(self, pod: objects_pb2.Pod, *args: str, timeout: float = 20) -> Any:
        return self.hosts.exec(self.pod_netns(pod), *args, timeout=timeout)


@contextlib.asynccontextmanager
async def running_cloud(
    etcd_endpoint: str,
    state: Path,
    hosts_count: int = 3,
    floating: str = "",
    lb_args: list[str] | None = None,
    agent_args: list[str] | None = None,
    dns: bool = False,
) -> AsyncIterator[Cloud]:
    """lb_args: start an lb on every host with these extra arguments;
    agent_args: extra arguments for every netagent; dns: a dns process
    answering in every tenant router."""
    hosts = await asyncio.to_thread(SimulatedHosts(uuid.uuid4().hex[:5], hosts_count).setup)
    procs: list[ServiceProcess] = []
    channel: grpc.aio.Channel | None = None
    cloud: Cloud | None = None
    try:
        ipam = await ServiceProcess(
            "ipam", etcd_endpoint, ["--floating-ranges", floating, "--gc-interval", "0"]
        ).start()
        procs.append(ipam)
        network = await ServiceProcess(
            "network", etcd_endpoint, ["--ipam", ipam.address, "--bootstrap-dir", str(state)]
        ).start()
        procs.append(network)
        channel = network.channel()
        cloud = Cloud(hosts, {}, network, ipam, (state / "admin-token").read_text().strip(), channel,
                      etcd_endpoint, agent_args=list(agent_args or []))  # fmt: skip
        if dns:
            cloud.dns = await ServiceProcess(
                "dns", etcd_endpoint, ["--hosts", ",".join(hosts.hosts), "--dns-listen", ""]
            ).start()
            procs.append(cloud.dns)
        for n in range(1, hosts_count + 1):
            await cloud.start_agent(n)
            if lb_args is not None:
                await cloud.start_lb(n, lb_args)
        yield cloud
        with contextlib.suppress(Exception):
            for t in cloud.tenants.values():
                for svc in (await t.call("ListServices", network_pb2.ListServicesRequest())).services:
                    await t.call("DeleteService", network_pb2.ObjectRef(name=svc.metadata.name))
                for pod in (await t.call("ListPods", network_pb2.ListPodsRequest())).pods:
                    await t.call("DeletePod", network_pb2.ObjectRef(name=pod.metadata.name))
            await asyncio.sleep(1)  # the agents unwire what they wired
    finally:
        if cloud is not None:
            # Also when the test's own set-up failed: no agent outlives its lab.
            procs += [*cloud.lbs.values(), *cloud.agents.values()]
        if channel is not None:
            await channel.close(None)
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                await proc.terminate()
            await proc.kill()
        await asyncio.to_thread(hosts.teardown)
