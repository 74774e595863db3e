"""The netagent service: wires pods into tenant networks on one host.

A skeleton until its issue lands: it serves gRPC health and reflection and
answers every pinet.netagent.v1.AgentService call with UNIMPLEMENTED.
"""

from __future__ import annotations

from pinet.netagent.v1 import netagent_pb2_grpc
from pinet.runtime.service import BaseApp, Runtime, main_for


class NetagentApp(BaseApp):
    name = "netagent"
    default_listen = "127.0.0.1:7711"

    def setup(self, rt: Runtime) -> None:
        rt.add_servicer(
            "pinet.netagent.v1.AgentService",
            netagent_pb2_grpc.add_AgentServiceServicer_to_server,
            netagent_pb2_grpc.AgentServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )


def app_factory() -> NetagentApp:
    return NetagentApp()


def main() -> None:
    main_for(app_factory())
