"""The ipam service: owns every address (pod, service and floating IPs).

A skeleton until its issue lands: it serves gRPC health and reflection and
answers every pinet.ipam.v1.IpamService call with UNIMPLEMENTED.
"""

from __future__ import annotations

from pinet.ipam.v1 import ipam_pb2_grpc
from pinet.runtime.service import BaseApp, Runtime, main_for


class IpamApp(BaseApp):
    name = "ipam"
    default_listen = "127.0.0.1:7701"

    def setup(self, rt: Runtime) -> None:
        rt.add_servicer(
            "pinet.ipam.v1.IpamService",
            ipam_pb2_grpc.add_IpamServiceServicer_to_server,
            ipam_pb2_grpc.IpamServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )


def app_factory() -> IpamApp:
    return IpamApp()


def main() -> None:
    main_for(app_factory())
