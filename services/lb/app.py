"""The lb service: programs the kernel load balancer on one host.

A skeleton until its issue lands: it serves gRPC health and reflection and
answers every pinet.lb.v1.LoadBalancerService call with UNIMPLEMENTED.
"""

from __future__ import annotations

from pinet.lb.v1 import lb_pb2_grpc
from pinet.runtime.service import BaseApp, Runtime, main_for


class LbApp(BaseApp):
    name = "lb"
    default_listen = "127.0.0.1:7721"

    def setup(self, rt: Runtime) -> None:
        rt.add_servicer(
            "pinet.lb.v1.LoadBalancerService",
            lb_pb2_grpc.add_LoadBalancerServiceServicer_to_server,
            lb_pb2_grpc.LoadBalancerServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )


def app_factory() -> LbApp:
    return LbApp()


def main() -> None:
    main_for(app_factory())
