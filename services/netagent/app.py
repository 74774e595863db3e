"""The netagent service: wires pods into their tenant's layer-2 network on
one host and keeps them so (see agent.py), registers the node and keeps its
heartbeat lease."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import grpc

from pinet.api.netagent.v1 import netagent_pb2_grpc
from pinet.api.network.v1 import objects_pb2
from pinet.hostnet.netns import add_host_netns_argument
from pinet.hostnet.netns import host_netns as host_netns_name
from pinet.runtime.service import BaseApp, Runtime, main_for
from services.netagent import isolation
from services.netagent.agent import Agent
from services.netagent.kernel import Kernel
from services.netagent.registration import NodeRegistration
from services.netagent.servicer import AgentServicer

log = logging.getLogger(__name__)

DEFAULT_CNI_SOCKET = "/run/pinet/netagent.sock"


def listen_on_cni_socket(server: grpc.aio.Server, path: Path) -> None:
    """The CNI plugin's way in: a Unix socket only root can open (its
    directory 0700, the socket 0600). A caller on it is this node's CNI
    plugin (pinet.runtime.authz), the only one allowed to Attach and Detach."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        if server.add_secure_port(f"unix:{path}", grpc.local_server_credentials(grpc.LocalConnectionType.UDS)) == 0:
            raise SystemExit(f"netagent: cannot listen on the CNI socket {path}")
    finally:
        os.umask(old)


class NetagentApp(BaseApp):
    name = "netagent"
    default_listen = "127.0.0.1:7711"

    def __init__(self) -> None:
        self.registration: NodeRegistration | None = None
        self.agent: Agent | None = None
        self.cni_socket: Path | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_host_netns_argument(parser)
        parser.add_argument("--underlay-ip", required=True, help="this host's address on the underlay network")
        parser.add_argument("--underlay-mtu", type=int, default=1500, help="MTU of the underlay network")
        parser.add_argument("--heartbeat-ttl", type=int, default=5, help="seconds the node stays Ready without us")
        parser.add_argument("--resync-interval", type=float, default=10.0, help="seconds between full repairs")
        parser.add_argument(
            "--guard-interval", type=float, default=1.0,
            help="seconds between checks that nobody changed the isolation rules (each check is one netlink "
            "call per namespace; a change found is repaired at once)",
        )  # fmt: skip
        parser.add_argument(
            "--protected-cidrs", default="",
            help="comma-separated IPv4 ranges that no pod may reach, e.g. the control-plane network "
            "(link-local, transit and router-identity ranges and every host's underlay address always are)",
        )  # fmt: skip
        parser.add_argument(
            "--conntrack-limit", type=int, default=isolation.DEFAULT_CONNTRACK_LIMIT,
            help="connections tracked at once per pod in its router; new ones beyond are dropped and counted "
            "(0: no limit)",
        )  # fmt: skip
        parser.add_argument(
            "--cni-socket", default=DEFAULT_CNI_SOCKET,
            help="Unix socket for the CNI plugin (root only); empty: none",
        )  # fmt: skip
        parser.add_argument(
            "--unsafe-no-isolation",
            action="store_true",
            help="for benchmarks only: no host guard, no anti-spoofing, no connection limit",
        )

    def setup(self, rt: Runtime) -> None:
        host_netns = host_netns_name(rt.args.host_netns)
        try:
            protected = isolation.parse_protected(rt.args.protected_cidrs)
        except isolation.PolicyError as exc:
            raise SystemExit(f"netagent: {exc}") from None
        if rt.args.conntrack_limit < 0:
            raise SystemExit("netagent: --conntrack-limit: must be 0 (no limit) or more")
        policy = isolation.Policy(not rt.args.unsafe_no_isolation, protected, rt.args.conntrack_limit)
        if not policy.enabled:
            log.warning("--unsafe-no-isolation: tenants can reach this host, each other's VXLAN and spoof addresses")
        kernel = Kernel(rt.args.node_name, host_netns, rt.args.underlay_ip, rt.args.underlay_mtu, policy)
        self.agent = Agent(rt.etcd, rt.args.node_name, kernel, rt.args.resync_interval, rt.args.guard_interval)
        rt.add_servicer(
            "pinet.netagent.v1.AgentService",
            netagent_pb2_grpc.add_AgentServiceServicer_to_server,
            AgentServicer(self.agent),
        )
        if rt.args.cni_socket:
            self.cni_socket = Path(rt.args.cni_socket)
            listen_on_cni_socket(rt.server, self.cni_socket)

    async def start(self, rt: Runtime) -> None:
        assert self.agent is not None
        await rt.etcd.wait_ready(timeout=60)
        node = objects_pb2.Node(
            name=rt.args.node_name, underlay_ip=rt.args.underlay_ip, agent_address=rt.args.listen,
            host_addresses=await self.agent.host_addresses(),
        )  # fmt: skip
        self.registration = NodeRegistration(rt.etcd, node, ttl=rt.args.heartbeat_ttl)
        await self.registration.start()
        self.agent.registration = self.registration
        await self.agent.start()
        rt.spawn(self.agent.run(), "netagent")

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
        if self.registration is not None:
            await self.registration.stop()
        if self.cni_socket is not None:
            self.cni_socket.unlink(missing_ok=True)


def app_factory() -> NetagentApp:
    return NetagentApp()


def main() -> None:
    main_for(app_factory())
