"""The dns service: answers service DNS names per tenant.

A skeleton until its issue lands: it serves gRPC health and reflection and
answers every pinet.dns.v1.DnsService call with UNIMPLEMENTED.
"""

from __future__ import annotations

from pinet.dns.v1 import dns_pb2_grpc
from pinet.runtime.service import BaseApp, Runtime, main_for


class DnsApp(BaseApp):
    name = "dns"
    default_listen = "127.0.0.1:7702"

    def setup(self, rt: Runtime) -> None:
        rt.add_servicer(
            "pinet.dns.v1.DnsService",
            dns_pb2_grpc.add_DnsServiceServicer_to_server,
            dns_pb2_grpc.DnsServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )


def app_factory() -> DnsApp:
    return DnsApp()


def main() -> None:
    main_for(app_factory())
