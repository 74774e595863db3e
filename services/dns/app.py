"""The dns service: answers the cluster zone for each tenant from a view
kept by informers over services, endpoints and pods.

It answers inside every tenant router namespace of the hosts it serves
(--hosts), on the tenant's DNS address, following routers as they come and
go, and on a local listener (127.0.0.1:10053) for one tenant.
"""

from __future__ import annotations

import argparse

from pinet.api.dns.v1 import dns_pb2_grpc
from pinet.runtime.config import split_hostport
from pinet.runtime.service import BaseApp, Runtime, main_for
from services.dns.answer import Config
from services.dns.informers import ClusterFeed
from services.dns.routers import RouterListeners
from services.dns.server import DnsServer
from services.dns.servicer import DnsServicer
from services.dns.view import View


class DnsApp(BaseApp):
    name = "dns"
    default_listen = "127.0.0.1:7702"

    def __init__(self) -> None:
        self.view = View()
        self.config = Config()
        self.feed: ClusterFeed | None = None
        self.server = DnsServer(self.view, self.config, self.serial)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--zone", default="cluster.local", help="the cluster DNS zone")
        parser.add_argument("--ttl", type=int, default=5, help="TTL of answers, seconds")
        parser.add_argument("--dns-listen", default="127.0.0.1:10053", help="local DNS listener (empty: none)")
        parser.add_argument("--dns-tenant", default="default", help="the tenant the local listener answers for")
        parser.add_argument("--upstream", default="", help="resolver for names outside the zone (host:port)")
        parser.add_argument(
            "--hosts", default="", help="comma-separated node names whose tenant routers this process serves"
        )
        parser.add_argument("--router-port", type=int, default=53, help="DNS port inside the tenant routers")

    def serial(self) -> int:
        return self.feed.informers.revision if self.feed is not None else 0

    def setup(self, rt: Runtime) -> None:
        self.config = Config(zone=rt.args.zone.strip("."), ttl=rt.args.ttl)
        feed = self.feed = ClusterFeed(rt.etcd, self.view)
        self.server = DnsServer(self.view, self.config, self.serial, rt.args.upstream, feed.dns_ip)
        rt.add_servicer("pinet.dns.v1.DnsService", dns_pb2_grpc.add_DnsServiceServicer_to_server, DnsServicer(self))

    async def start(self, rt: Runtime) -> None:
        assert self.feed is not None
        await rt.etcd.wait_ready(timeout=60)
        await self.feed.informers.start()
        if rt.args.dns_listen:
            host, port = split_hostport(rt.args.dns_listen, "--dns-listen")
            await self.server.listen(rt.args.dns_tenant, host, port)
        hosts = [h.strip() for h in rt.args.hosts.split(",") if h.strip()]
        if hosts:
            routers = RouterListeners(self.server, hosts, self.feed.tenant_of_vni, rt.args.router_port)
            rt.spawn(routers.run(), "dns-routers")

    async def stop(self) -> None:
        await self.server.close()
        if self.feed is not None:
            await self.feed.informers.stop()


def app_factory() -> DnsApp:
    return DnsApp()


def main() -> None:
    main_for(app_factory())
