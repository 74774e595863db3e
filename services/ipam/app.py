"""The ipam service: owns every address (pod, service and floating IPs).

Every replica serves the API from a watched cache of pools and used
addresses and claims addresses with etcd transactions (grouped into shared
round trips under load); the elected replica also runs the garbage collector.
"""

from __future__ import annotations

import argparse
import logging

import grpc

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.etcd.batch import TxnBatcher
from pinet.etcd.lease import LeaderElection
from pinet.runtime.errors import ApiError
from pinet.runtime.service import BaseApp, Runtime, main_for
from services.ipam.cache import PoolCache
from services.ipam.gc import GarbageCollector
from services.ipam.pools import FLOATING_POOL
from services.ipam.servicer import IpamServicer

log = logging.getLogger(__name__)


class IpamApp(BaseApp):
    name = "ipam"
    default_listen = "127.0.0.1:7701"

    def __init__(self) -> None:
        self.cache: PoolCache | None = None
        self.batcher: TxnBatcher | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--floating-ranges",
            default="203.0.113.0/24",
            help="comma-separated CIDRs or a-b ranges of the public floating-IP pool, created if missing (empty: none)",
        )
        parser.add_argument("--gc-interval", type=float, default=10.0, help="seconds between GC sweeps (0: no GC)")
        parser.add_argument(
            "--owner-grace", type=float, default=60.0, help="seconds before an allocation's owner must exist"
        )
        parser.add_argument(
            "--node-grace",
            type=float,
            default=30.0,
            help="seconds after a node's lease expires before its pod IPs return",
        )

    def setup(self, rt: Runtime) -> None:
        self.cache = PoolCache(rt.etcd)
        self.batcher = TxnBatcher(rt.etcd)
        self.servicer = IpamServicer(rt.etcd, self.cache, self.batcher)
        rt.add_servicer("pinet.ipam.v1.IpamService", ipam_pb2_grpc.add_IpamServiceServicer_to_server, self.servicer)

    async def start(self, rt: Runtime) -> None:
        assert self.cache is not None
        await rt.etcd.wait_ready(timeout=60)
        await self.cache.start()
        ranges = [r.strip() for r in rt.args.floating_ranges.split(",") if r.strip()]
        # ABORTED: another pool was created meanwhile (the network service
        # making its tenants' pools as it starts); the check is made again.
        for _ in range(50):
            if not ranges or self.cache.pool(FLOATING_POOL) is not None:
                break
            pool = ipam_pb2.Pool(name=FLOATING_POOL, kind=ipam_pb2.POOL_KIND_FLOATING, ranges=ranges)
            try:
                await self.servicer._create_pool(pool)
                log.info("created the floating-IP pool from %s", ",".join(ranges))
            except ApiError as exc:
                if exc.code == grpc.StatusCode.ALREADY_EXISTS:
                    break
                if exc.code != grpc.StatusCode.ABORTED:
                    raise
                await self.cache.pools.wait_revision(await rt.etcd.current_revision(), timeout=10)
        else:
            raise RuntimeError("the floating-IP pool could not be created: pools kept changing")
        if rt.args.gc_interval > 0:
            gc = GarbageCollector(rt.etcd, self.cache, rt.args.owner_grace, rt.args.node_grace, rt.args.gc_interval)
            election = LeaderElection(rt.etcd, "ipam-gc", f"{rt.args.node_name}:{rt.bound_port}")
            rt.spawn(election.run(gc.run), "ipam-gc")

    async def stop(self) -> None:
        if self.batcher is not None:
            log.info(
                "claimed addresses in %d transactions over %d etcd round trips",
                self.batcher.submitted,
                self.batcher.round_trips,
            )
            await self.batcher.stop()
        if self.cache is not None:
            await self.cache.stop()


def app_factory() -> IpamApp:
    return IpamApp()


def main() -> None:
    main_for(app_factory())
