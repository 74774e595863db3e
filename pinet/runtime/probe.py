"""gRPC health probing (what grpc_health_probe does) and reflection listing."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, aio_channel


async def check(
    address: str, service: str = "", timeout: float = 2.0, tls: Tls | None = None, peer: Identity | None = None
) -> str:
    """The health status name of service at address ("SERVING", ...), or
    "UNREACHABLE". With tls, over mTLS to the service peer (plaintext
    otherwise: a service run with --insecure)."""
    async with aio_channel(tls, address, peer) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


async def wait_serving(
    address: str, timeout: float = 30.0, service: str = "", tls: Tls | None = None, peer: Identity | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = "UNREACHABLE"
    while loop.time() < deadline:
        status = await check(address, service, timeout=1.0, tls=tls, peer=peer)
        if status == "SERVING":
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{address} did not become SERVING within {timeout:.0f}s (last status {status})")


async def list_services(
    address: str, timeout: float = 2.0, tls: Tls | None = None, peer: Identity | None = None
) -> list[str]:
    """Service names listed through server reflection."""
    async with aio_channel(tls, address, peer) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = stub.ServerReflectionInfo(iter([request]), timeout=timeout)
        async for resp in call:
            return sorted(s.name for s in resp.list_services_response.service)
    return []
