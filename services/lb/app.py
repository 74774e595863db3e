"""The lb service, wired: the kernel load balancer of one host (informers.py
follows etcd, tracker.py decides what is due, reconciler.py programs a
backend from backends/), and its API (servicer.py)."""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import logging

from pinet.api.lb.v1 import lb_pb2_grpc
from pinet.hostnet.netns import add_host_netns_argument
from pinet.hostnet.netns import host_netns as host_netns_name
from pinet.runtime.service import BaseApp, Runtime, main_for
from services.lb.backends.base import Backend
from services.lb.backends.nftables import NftablesBackend
from services.lb.host import HostForwarding
from services.lb.informers import LoadBalancer
from services.lb.model import Scheduler
from services.lb.servicer import LbServicer

log = logging.getLogger(__name__)


def ipvs_missing() -> str:
    """Why this kernel's IPVS cannot be used ("" when it can): the answer of
    a real request, asked from a thread of its own because pyroute2's
    synchronous sockets run an event loop of their own, which cannot start
    inside the service's running one."""

    def ask() -> str:
        try:
            from pyroute2 import IPVS

            sock = IPVS()
            try:
                sock.service("dump")
            finally:
                sock.close()
        except Exception as exc:  # any failure means: not this backend
            if getattr(exc, "code", None) == errno.ENOENT:
                return "no IPVS generic netlink family: the kernel has no ip_vs module"
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ""

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ipvs-probe") as pool:
        return pool.submit(ask).result(timeout=30)


def make_backend(choice: str) -> Backend:
    if choice == "auto":
        missing = ipvs_missing()
        if missing:
            log.info("--backend auto: the kernel has no usable IPVS (%s); using nftables", missing)
        choice = "nftables" if missing else "ipvs"
    if choice == "ipvs":
        from services.lb.backends.ipvs import IpvsBackend  # imports pyroute2's IPVS only where wanted

        backend: Backend = IpvsBackend()
        return backend
    return NftablesBackend()


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
