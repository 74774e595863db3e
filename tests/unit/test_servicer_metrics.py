"""gRPC call metrics are recorded by the servicer decorators: by service,
method and status code, over a real gRPC server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.devstack.etcd import free_port
from pinet.runtime.errors import not_found
from pinet.runtime.servicer import unary

SERVICE = "pinet.ipam.v1.IpamService"
Context = grpc.aio.ServicerContext[Any, Any]


class Servicer(ipam_pb2_grpc.IpamServiceServicer):
    @unary
    async def GetPool(self, request: ipam_pb2.GetPoolRequest, context: Context) -> ipam_pb2.PoolStatus:
        raise not_found(f"pool {request.name!r} does not exist")

    @unary
    async def DeletePool(self, request: ipam_pb2.DeletePoolRequest, context: Context) -> ipam_pb2.DeletePoolResponse:
        raise RuntimeError("a bug")

    @unary
    async def ListPools(self, request: ipam_pb2.ListPoolsRequest, context: Context) -> ipam_pb2.ListPoolsResponse:
        return ipam_pb2.ListPoolsResponse()


def handled(method: str, code: str) -> float:
    labels = {"service": SERVICE, "method": method, "code": code}
    return REGISTRY.get_sample_value("pinet_grpc_server_handled_total", labels) or 0.0


async def test_calls_are_counted_by_service_method_and_code() -> None:
    server = grpc.aio.server()
    ipam_pb2_grpc.add_IpamServiceServicer_to_server(Servicer(), server)  # type: ignore[abstract]
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    before = handled("ListPools", "OK"), handled("GetPool", "NOT_FOUND"), handled("DeletePool", "INTERNAL")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ipam_pb2_grpc.IpamServiceStub(channel)
            for _ in range(3):
                await stub.ListPools(ipam_pb2.ListPoolsRequest())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetPool(ipam_pb2.GetPoolRequest(name="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "does not exist" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DeletePool(ipam_pb2.DeletePoolRequest(name="x"))
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert err.value.details() == "internal error in DeletePool: RuntimeError", "no internals leak"
    finally:
        await server.stop(0)
    assert handled("ListPools", "OK") - before[0] == 3
    assert handled("GetPool", "NOT_FOUND") - before[1] == 1
    assert handled("DeletePool", "INTERNAL") - before[2] == 1
    count = REGISTRY.get_sample_value(
        "pinet_grpc_server_handling_seconds_count", {"service": SERVICE, "method": "ListPools"}
    )
    assert count is not None and count >= 3
