"""The netagent service: wires pods into tenant networks on one host.

This version registers the node and keeps its heartbeat lease (so the
scheduler sees it Ready); the Attach/Detach/Check/List calls still answer
UNIMPLEMENTED and nothing is wired (issue 5).
"""

from __future__ import annotations

import argparse

from pinet.netagent.v1 import netagent_pb2_grpc
from pinet.network.v1 import objects_pb2
from pinet.nodes import NodeRegistration
from pinet.runtime.service import BaseApp, Runtime, main_for


class NetagentApp(BaseApp):
    name = "netagent"
    default_listen = "127.0.0.1:7711"

    def __init__(self) -> None:
        self.registration: NodeRegistration | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--underlay-ip", default="", help="this host's address on the underlay network")
        parser.add_argument("--heartbeat-ttl", type=int, default=5, help="seconds the node stays Ready without us")

    def setup(self, rt: Runtime) -> None:
        rt.add_servicer(
            "pinet.netagent.v1.AgentService",
            netagent_pb2_grpc.add_AgentServiceServicer_to_server,
            netagent_pb2_grpc.AgentServiceServicer(),  # type: ignore[abstract]  # skeleton: UNIMPLEMENTED
        )

    async def start(self, rt: Runtime) -> None:
        await rt.etcd.wait_ready(timeout=60)
        node = objects_pb2.Node(name=rt.args.node_name, underlay_ip=rt.args.underlay_ip, agent_address=rt.args.listen)
        self.registration = NodeRegistration(rt.etcd, node, ttl=rt.args.heartbeat_ttl)
        await self.registration.start()

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()


def app_factory() -> NetagentApp:
    return NetagentApp()


def main() -> None:
    main_for(app_factory())
