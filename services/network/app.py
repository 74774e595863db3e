"""The network service: the API users and tools talk to.

A skeleton until its issue lands: it serves gRPC health and reflection and
answers every pinet.network.v1.NetworkService call with UNIMPLEMENTED.
"""

from __future__ import annotations

from pinet.network.v1 import network_pb2_grpc
from pinet.runtime.service import BaseApp, Runtime, main_for


class NetworkApp(BaseApp):
    name = "network"
    default_listen = "127.0.0.1:7700"

    def setup(self, rt: Runtime) -> None:
        rt.add_servicer(
            "pinet.network.v1.AdminService",
            network_pb2_grpc.add_AdminServiceServicer_to_server,
            network_pb2_grpc.AdminServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )
        rt.add_servicer(
            "pinet.network.v1.NetworkService",
            network_pb2_grpc.add_NetworkServiceServicer_to_server,
            network_pb2_grpc.NetworkServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )


def app_factory() -> NetworkApp:
    return NetworkApp()


def main() -> None:
    main_for(app_factory())
