"""The lb service: programs the kernel load balancer of one host (see
controller.py) and shows, read back from the kernel, what it programmed."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from pinet.api.common.v1 import meta_pb2
from pinet.api.lb.v1 import lb_pb2, lb_pb2_grpc
from pinet.hostnet.netns import add_host_netns_argument, list_netns
from pinet.hostnet.netns import host_netns as host_netns_name
from pinet.runtime.errors import invalid
from pinet.runtime.service import BaseApp, Runtime, main_for
from pinet.runtime.servicer import unary
from services.lb.backend import Backend, NftablesBackend
from services.lb.controller import LoadBalancer
from services.lb.host import HostForwarding
from services.lb.model import Frontend, Scheduler, VirtualService

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

FRONTENDS = {
    Frontend.CLUSTER_IP: lb_pb2.FRONTEND_CLUSTER_IP,
    Frontend.NODE_PORT: lb_pb2.FRONTEND_NODE_PORT,
    Frontend.FLOATING_IP: lb_pb2.FRONTEND_FLOATING_IP,
}
SCHEDULERS = {
    Scheduler.ROUND_ROBIN: lb_pb2.SCHEDULER_ROUND_ROBIN,
    Scheduler.LEAST_CONNECTION: lb_pb2.SCHEDULER_LEAST_CONNECTION,
    Scheduler.SOURCE_HASH: lb_pb2.SCHEDULER_SOURCE_HASH,
}
PROTOCOLS = {"tcp": meta_pb2.PROTOCOL_TCP, "udp": meta_pb2.PROTOCOL_UDP}
MAX_PAGE = 1000


def ipvs_available() -> bool:
    try:
        from pyroute2 import IPVS

        IPVS().close()
        return True
    except Exception:
        return False


def make_backend(choice: str) -> Backend:
    if choice == "auto":
        choice = "ipvs" if ipvs_available() else "nftables"
    if choice == "ipvs":
        from services.lb.ipvs import IpvsBackend  # imports pyroute2's IPVS only where wanted

        backend: Backend = IpvsBackend()
        return backend
    return NftablesBackend()


def to_proto(vs: VirtualService) -> lb_pb2.VirtualService:
    return lb_pb2.VirtualService(
        tenant=vs.tenant, service=vs.service, frontend=FRONTENDS[vs.frontend], vip=vs.vip,
        protocol=PROTOCOLS.get(vs.protocol, meta_pb2.PROTOCOL_UNSPECIFIED), port=vs.port,
        scheduler=SCHEDULERS[vs.scheduler], persistence_timeout_seconds=vs.persistence,
        real_servers=[lb_pb2.RealServer(ip=s.ip, port=s.port, weight=s.weight) for s in vs.real_servers],
    )  # fmt: skip


class LbServicer(lb_pb2_grpc.LoadBalancerServiceServicer):
    def __init__(self, app: LbApp) -> None:
        self.app = app

    async def _programmed(self, tenant: str) -> list[VirtualService]:
        lb = self.app.lb
        assert lb is not None
        want = lb.desired(tenant or None)
        present = list_netns()
        out: list[VirtualService] = []
        for _, r in sorted(want.routers.items()):
            if r.netns in present:
                out += await lb.kernel_thread.call(lb.backend.read, r)
        return out

    @unary
    async def ListVirtualServices(
        self, request: lb_pb2.ListVirtualServicesRequest, context: Context
    ) -> lb_pb2.ListVirtualServicesResponse:
        size = request.page_size or 100
        if size < 0 or size > MAX_PAGE:
            raise invalid(f"page_size: must be between 1 and {MAX_PAGE}")
        try:
            start = int(request.page_token or "0")
        except ValueError:
            raise invalid("page_token: not a token from a previous page of this list") from None
        found = await self._programmed(request.tenant)
        page = found[start : start + size]
        token = str(start + size) if start + size < len(found) else ""
        return lb_pb2.ListVirtualServicesResponse(virtual_services=[to_proto(v) for v in page], next_page_token=token)

    @unary
    async def GetStatus(self, request: lb_pb2.GetStatusRequest, context: Context) -> lb_pb2.GetStatusResponse:
        lb = self.app.lb
        assert lb is not None
        found = await self._programmed("")
        last = timestamp_pb2.Timestamp()
        if lb.last_sync:
            last.FromNanoseconds(int(lb.last_sync * 1e9))
        return lb_pb2.GetStatusResponse(
            node=lb.node,
            backend=lb_pb2.BACKEND_IPVS if lb.backend.kind == "ipvs" else lb_pb2.BACKEND_NFTABLES,
            virtual_services=len(found),
            real_servers=sum(len(v.real_servers) for v in found),
            last_sync=last,
            last_sync_seconds=lb.last_sync_seconds,
            synced_revision=min((i.revision for i in lb.informers), default=0),
        )


class LbApp(BaseApp):
    name = "lb"
    default_listen = "127.0.0.1:7721"

    def __init__(self) -> None:
        self.lb: LoadBalancer | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_host_netns_argument(parser)
        parser.add_argument(
            "--backend", choices=["auto", "ipvs", "nftables"], default="auto",
            help="kernel load balancer; auto: IPVS where the kernel has it, nftables otherwise",
        )  # fmt: skip
        parser.add_argument(
            "--scheduler", choices=[s.value for s in Scheduler], default="rr",
            help="how endpoints are chosen: rr (round robin), lc (least connection, IPVS only), sh (source hash)",
        )  # fmt: skip
        parser.add_argument("--resync-interval", type=float, default=30.0, help="seconds between full repairs")

    def setup(self, rt: Runtime) -> None:
        host_netns = host_netns_name(rt.args.host_netns)
        backend = make_backend(rt.args.backend)
        scheduler = Scheduler(rt.args.scheduler)
        if scheduler is Scheduler.LEAST_CONNECTION and backend.kind != "ipvs":
            log.warning("least-connection needs IPVS; the nftables backend balances round robin")
        self.lb = LoadBalancer(
            rt.etcd, rt.args.node_name, backend, HostForwarding(host_netns), scheduler, rt.args.resync_interval
        )
        log.info("lb on %s with the %s backend", rt.args.node_name, backend.kind)
        rt.add_servicer(
            "pinet.lb.v1.LoadBalancerService", lb_pb2_grpc.add_LoadBalancerServiceServicer_to_server, LbServicer(self)
        )

    async def start(self, rt: Runtime) -> None:
        assert self.lb is not None
        await rt.etcd.wait_ready(timeout=60)
        await self.lb.start()
        rt.spawn(self.lb.run(), "lb")

    async def stop(self) -> None:
        if self.lb is not None:
            await self.lb.stop()


def app_factory() -> LbApp:
    return LbApp()


def main() -> None:
    main_for(app_factory())
