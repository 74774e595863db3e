"""Two network replicas: either serves the API; when the one running the
controllers is killed, the other takes over and endpoints keep following."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from pinet.api.network.v1 import network_pb2, network_pb2_grpc
from pinet.devstack.etcd import EtcdServer
from pinet.etcd.keyspace import leader_key
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.platform import Tenant
from tests.helpers.procs import ServiceProcess
from tests.network.test_api import endpoint_ips, pod, service_from_yaml, wait_for


@pytest.mark.slow
async def test_controllers_fail_over_to_the_other_replica(etcd_server: EtcdServer, tmp_path: Path) -> None:
    etcd = await etcd_server.client().connect()
    ipam = await ServiceProcess("ipam", etcd_server.endpoint, ["--floating-ranges", "", "--gc-interval", "0"]).start()
    replicas = [
        await ServiceProcess(
            "network", etcd_server.endpoint,
            ["--ipam", ipam.address, "--bootstrap-dir", str(tmp_path), "--node-name", f"replica-{i}"],
        ).start()
        for i in range(2)
    ]  # fmt: skip
    agents = await FakeWiringAgents(etcd, {f"rep-{uuid.uuid4().hex[:6]}": "192.0.2.31"}).start()
    channels = [r.channel() for r in replicas]
    try:
        admin = network_pb2_grpc.AdminServiceStub(channels[0])
        token = (await admin.IssueToken(
            network_pb2.IssueTokenRequest(tenant=f"r{uuid.uuid4().hex[:6]}"),
            metadata=(("authorization", f"Bearer {(tmp_path / 'admin-token').read_text().strip()}"),),
        )).token  # fmt: skip
        via = [Tenant("t", token, network_pb2_grpc.NetworkServiceStub(ch)) for ch in channels]
        svc = (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n"
        )
        await via[0].call("CreateService", network_pb2.CreateServiceRequest(service=service_from_yaml(svc)))
        first = await via[1].call("CreatePod", network_pb2.CreatePodRequest(pod=pod("one", {"app": "web"})))
        await wait_for(lambda: _same(endpoint_ips(via[1], "web"), [first.status.pod_ip]))

        holder = await etcd.get(leader_key("network-controllers"))
        assert holder is not None
        leader = next(i for i, r in enumerate(replicas) if holder.value.decode().endswith(f":{r.port}"))
        survivor = 1 - leader
        leader_proc = replicas[leader].proc
        assert leader_proc is not None
        leader_proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        second = await via[survivor].call("CreatePod", network_pb2.CreatePodRequest(pod=pod("two", {"app": "web"})))
        await wait_for(
            lambda: _same(endpoint_ips(via[survivor], "web"), [first.status.pod_ip, second.status.pod_ip]), 15
        )
        print(f"endpoints followed {time.monotonic() - killed:.1f}s after the leader was killed")
        for name in ("one", "two"):
            await via[survivor].call("DeletePod", network_pb2.ObjectRef(name=name))
        await via[survivor].call("DeleteService", network_pb2.ObjectRef(name="web"))
    finally:
        for ch in channels:
            await ch.close(None)
        await agents.stop()
        for r in replicas:
            await r.kill()
        await ipam.terminate()
        await etcd.close()


async def _same(coro: object, expected: list[str]) -> bool:
    return sorted(await coro) == sorted(expected)  # type: ignore[misc]
