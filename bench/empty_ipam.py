"""An IpamService whose Allocate does nothing: it answers every call with
the same ready-made response of a real allocation's size. bench-ipam runs it
as the ceiling that any Python gRPC service reaches on this machine, so that
the cost of the framework and the cost of pinet's work can be told apart.

    python -m bench.empty_ipam --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import uvloop

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc

RESPONSE = ipam_pb2.AllocateResponse(
    allocation=ipam_pb2.Allocation(
        pool="bench64.default.pod",
        address="10.244.123.45",
        owner=ipam_pb2.Owner(tenant="bench64", kind=ipam_pb2.OWNER_KIND_POD, handle="pod-12345"),
        resource_version=123456,
    ),
    created=True,
)
RESPONSE.allocation.allocated_at.GetCurrentTime()


class EmptyIpam(ipam_pb2_grpc.IpamServiceServicer):
    async def Allocate(
        self, request: ipam_pb2.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ipam_pb2.AllocateResponse:
        return RESPONSE


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # Registered like the real service (the other methods answer UNIMPLEMENTED).
    ipam_pb2_grpc.add_IpamServiceServicer_to_server(EmptyIpam(), server)  # type: ignore[abstract]
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    uvloop.run(serve(parser.parse_args().listen))
