"""Network API fixtures: ipam and network processes, tenants, nodes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from pinet.api.network.v1 import network_pb2, network_pb2_grpc
from pinet.devstack.etcd import EtcdServer
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.procs import ServiceProcess

if TYPE_CHECKING:
    from pinet.api.network.v1.network_pb2_grpc import AdminServiceAsyncStub, NetworkServiceAsyncStub


@dataclass
class Platform:
    ipam: ServiceProcess
    network: ServiceProcess
    admin_token: str
    channel: grpc.aio.Channel

    @property
    def admin(self) -> AdminServiceAsyncStub:
        return network_pb2_grpc.AdminServiceStub(self.channel)

    async def tenant(self, name: str = "") -> Tenant:
        name = name or f"t{uuid.uuid4().hex[:8]}"
        resp = await self.admin.IssueToken(
            network_pb2.IssueTokenRequest(tenant=name), metadata=(("authorization", f"Bearer {self.admin_token}"),)
        )
        return Tenant(name, resp.token, network_pb2_grpc.NetworkServiceStub(self.channel))


@dataclass
class Tenant:
    name: str
    token: str
    stub: NetworkServiceAsyncStub

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.md, timeout=20)


@pytest.fixture(scope="module")
async def platform(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    state = tmp_path_factory.mktemp("network")
    ipam = await ServiceProcess(
        "ipam", etcd_server.endpoint, ["--floating-ranges", "203.0.113.0/24", "--gc-interval", "0"]
    ).start()
    network = await ServiceProcess(
        "network", etcd_server.endpoint, ["--ipam", ipam.address, "--bootstrap-dir", str(state)]
    ).start()
    channel = network.channel()
    admin_token = (Path(state) / "admin-token").read_text().strip()
    yield Platform(ipam, network, admin_token, channel)
    await channel.close(None)
    await network.terminate()
    await ipam.terminate()


@pytest.fixture(scope="module")
async def agents(etcd_server: EtcdServer, platform: Platform) -> AsyncIterator[FakeWiringAgents]:
    etcd = await etcd_server.client().connect()
    suffix = uuid.uuid4().hex[:6]
    agents = await FakeWiringAgents(etcd, {f"node-a-{suffix}": "192.0.2.11", f"node-b-{suffix}": "192.0.2.12"}).start()
    yield agents
    await agents.stop()
    await etcd.close()
