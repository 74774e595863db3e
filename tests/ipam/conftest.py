"""IPAM fixtures: real ipam processes over real gRPC against the test etcd."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.devstack.etcd import EtcdServer
from tests.helpers.procs import ServiceProcess

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub

NO_GC = ["--gc-interval", "0", "--floating-ranges", ""]


@pytest.fixture
async def ipam_proc(etcd_server: EtcdServer) -> AsyncIterator[ServiceProcess]:
    proc = await ServiceProcess("ipam", etcd_server.endpoint, NO_GC).start()
    yield proc
    await proc.terminate()


@pytest.fixture
async def ipam(ipam_proc: ServiceProcess) -> AsyncIterator[IpamServiceAsyncStub]:
    async with ipam_proc.channel() as channel:
        yield ipam_pb2_grpc.IpamServiceStub(channel)


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def pod_owner(tenant: str, handle: str, node: str = "", name: str = "") -> ipam_pb2.Owner:
    return ipam_pb2.Owner(tenant=tenant, kind=ipam_pb2.OWNER_KIND_POD, handle=handle, node=node, name=name)


async def ensure_network(stub: IpamServiceAsyncStub, tenant: str) -> ipam_pb2.EnsureNetworkPoolsResponse:
    resp: ipam_pb2.EnsureNetworkPoolsResponse = await stub.EnsureNetworkPools(
        ipam_pb2.EnsureNetworkPoolsRequest(tenant=tenant)
    )
    return resp
