"""The dns service: answers the cluster zone for each tenant from a view
kept by informers over services, endpoints and pods.

It answers inside every tenant router namespace of the hosts it serves
(--hosts), on the tenant's DNS address, following routers as they come and
go, and on a local listener (127.0.0.1:10053) for one tenant.
"""

from __future__ import annotations

import argparse

import grpc

from pinet.api.dns.v1 import dns_pb2, dns_pb2_grpc
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.informer import Event, EventType, Informer
from pinet.etcd.keyspace import ENDPOINTS, PODS, SERVICES, TENANTS
from pinet.runtime.config import split_hostport
from pinet.runtime.errors import invalid
from pinet.runtime.service import BaseApp, Runtime, main_for
from pinet.runtime.servicer import unary
from services.dns.answer import Config
from services.dns.handler import handle
from services.dns.routers import RouterListeners
from services.dns.server import DnsServer
from services.dns.view import View


class DnsServicer(dns_pb2_grpc.DnsServiceServicer):
    def __init__(self, app: DnsApp) -> None:
        self.app = app

    @unary
    async def Lookup(self, request: dns_pb2.LookupRequest, context: grpc.aio.ServicerContext) -> dns_pb2.LookupResponse:  # type: ignore[type-arg]
        from dnslib import QTYPE, RCODE, DNSRecord

        qtype = request.type or "A"
        if not request.name or qtype not in QTYPE.reverse:
            raise invalid("name and a record type (A, AAAA, SRV, PTR, TXT, ...) are required")
        query = DNSRecord.question(request.name, qtype).pack()
        reply = handle(query, self.app.view.tenant(request.tenant), self.app.config, self.app.serial(), True)
        resp = dns_pb2.LookupResponse()
        if reply.data is None or reply.forward:
            resp.rcode = "REFUSED"
            return resp
        parsed = DNSRecord.parse(reply.data)
        resp.rcode = RCODE.get(parsed.header.rcode)
        for section, rrs in ((resp.answer, parsed.rr), (resp.authority, parsed.auth), (resp.additional, parsed.ar)):
            for rr in rrs:
                section.append(
                    dns_pb2.ResourceRecord(name=str(rr.rname), type=QTYPE.get(rr.rtype), ttl=rr.ttl, data=str(rr.rdata))
                )
        return resp

    @unary
    async def GetStatus(
        self,
        request: dns_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> dns_pb2.GetStatusResponse:
        app = self.app
        resp = dns_pb2.GetStatusResponse(zone=app.config.zone, revision=app.serial(), queries_total=app.server.queries)
        for name, view in sorted(app.view.tenants.items()):
            listeners = [f"{ln.address[0]}:{ln.address[1]}" for ln in app.server.listeners if ln.tenant == name]
            resp.tenants.append(
                dns_pb2.TenantView(
                    tenant=name, services=len(view.services), pods=sum(len(v) for v in view.pod_ips.values()),
                    listeners=listeners,
                )
            )  # fmt: skip
        return resp


class DnsApp(BaseApp):
    name = "dns"
    default_listen = "127.0.0.1:7702"

    def __init__(self) -> None:
        self.view = View()
        self.config = Config()
        self.informers: list[Informer[object]] = []
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
        return max((i.revision for i in self.informers), default=0)

    def setup(self, rt: Runtime) -> None:
        self.config = Config(zone=rt.args.zone.strip("."), ttl=rt.args.ttl)
        tenants: Informer[objects_pb2.Tenant] = Informer(rt.etcd, TENANTS.prefix, TENANTS.decode, "dns-tenants")

        def dns_ip(tenant: str) -> str:
            t = tenants.get(TENANTS.key(tenant))
            return t.network.dns_ip if t is not None else ""

        self.server = DnsServer(self.view, self.config, self.serial, rt.args.upstream, dns_ip)
        services: Informer[objects_pb2.Service] = Informer(rt.etcd, SERVICES.prefix, SERVICES.decode, "dns-services")
        endpoints: Informer[objects_pb2.Endpoints] = Informer(
            rt.etcd, ENDPOINTS.prefix, ENDPOINTS.decode, "dns-endpoints"
        )
        pods: Informer[objects_pb2.Pod] = Informer(rt.etcd, PODS.prefix, PODS.decode, "dns-pods")
        services.subscribe(self._on_service)
        endpoints.subscribe(self._on_endpoints)
        pods.subscribe(self._on_pod)
        self.informers = [tenants, services, endpoints, pods]  # type: ignore[list-item]
        self.tenants = tenants
        rt.add_servicer("pinet.dns.v1.DnsService", dns_pb2_grpc.add_DnsServiceServicer_to_server, DnsServicer(self))

    def _on_service(self, event: Event[objects_pb2.Service]) -> None:
        tenant, namespace, name = SERVICES.parts(event.key)
        if event.type is EventType.DELETED:
            self.view.delete_service(tenant, namespace, name)
        else:
            self.view.put_service(tenant, event.obj)

    def _on_endpoints(self, event: Event[objects_pb2.Endpoints]) -> None:
        tenant, namespace, name = ENDPOINTS.parts(event.key)
        if event.type is EventType.DELETED:
            self.view.delete_endpoints(tenant, namespace, name)
        else:
            self.view.put_endpoints(tenant, event.obj)

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        tenant = PODS.parts(event.key)[0]
        if event.type is EventType.DELETED:
            self.view.delete_pod(tenant, event.obj)
        else:
            self.view.put_pod(tenant, event.obj, event.old)

    async def start(self, rt: Runtime) -> None:
        await rt.etcd.wait_ready(timeout=60)
        for informer in self.informers:
            informer.start()
        for informer in self.informers:
            await informer.wait_synced()
        if rt.args.dns_listen:
            host, port = split_hostport(rt.args.dns_listen, "--dns-listen")
            await self.server.listen(rt.args.dns_tenant, host, port)
        hosts = [h.strip() for h in rt.args.hosts.split(",") if h.strip()]
        if hosts:
            routers = RouterListeners(self.server, hosts, self._tenant_of_vni, rt.args.router_port)
            rt.spawn(routers.run(), "dns-routers")

    def _tenant_of_vni(self, vni: int) -> tuple[str, str] | None:
        for tenant in self.tenants.values():
            if tenant.network.vni == vni:
                return tenant.name, tenant.network.dns_ip
        return None

    async def stop(self) -> None:
        await self.server.close()
        for informer in self.informers:
            await informer.stop()


def app_factory() -> DnsApp:
    return DnsApp()


def main() -> None:
    main_for(app_factory())
