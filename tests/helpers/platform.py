"""The control plane as the API tests see it: the ipam and network
processes, an admin, and tenants calling with their tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from pinet.api.network.v1 import network_pb2, network_pb2_grpc
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
