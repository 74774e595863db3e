"""The pinet.lb.v1.LoadBalancerService servicer: what the lb programmed,
read back from the kernel (not from its own memory)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from pinet.api.lb.v1 import lb_pb2, lb_pb2_grpc
from pinet.hostnet.netns import list_netns
from pinet.objects import protocol
from pinet.runtime.paging import page_after, page_size
from pinet.runtime.servicer import unary
from services.lb.model import Frontend, Scheduler, VirtualService

if TYPE_CHECKING:
    from services.lb.app import LbApp

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
MAX_PAGE = 1000


def vs_key(vs: VirtualService) -> str:
    """Where a virtual service sorts in a list, and its page token."""
    return f"{vs.tenant}/{ipaddress.IPv4Address(vs.vip).packed.hex()}/{vs.protocol}/{vs.port:05d}"


def to_proto(vs: VirtualService) -> lb_pb2.VirtualService:
    return lb_pb2.VirtualService(
        tenant=vs.tenant, service=vs.service, frontend=FRONTENDS[vs.frontend], vip=vs.vip,
        protocol=protocol.from_kernel(vs.protocol), port=vs.port,
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
        size = page_size(request.page_size, 100, MAX_PAGE)
        found = sorted(await self._programmed(request.tenant), key=vs_key)
        page, token = page_after(found, vs_key, request.page_token, size)
        return lb_pb2.ListVirtualServicesResponse(virtual_services=[to_proto(v) for v in page], next_page_token=token)

    @unary
    async def GetStatus(self, request: lb_pb2.GetStatusRequest, context: Context) -> lb_pb2.GetStatusResponse:
        lb = self.app.lb
        assert lb is not None
        found = await self._programmed("")
        last = timestamp_pb2.Timestamp()
        if lb.step.last_sync:
            last.FromNanoseconds(int(lb.step.last_sync * 1e9))
        return lb_pb2.GetStatusResponse(
            node=lb.node,
            backend=lb_pb2.BACKEND_IPVS if lb.backend.kind == "ipvs" else lb_pb2.BACKEND_NFTABLES,
            virtual_services=len(found),
            real_servers=sum(len(v.real_servers) for v in found),
            last_sync=last,
            last_sync_seconds=lb.step.last_sync_seconds,
            synced_revision=min((i.revision for i in lb.informers), default=0),
        )
