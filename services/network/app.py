"""The network service: the API users and tools talk to.

Every replica serves the API; the elected one also runs the endpoints and
deployment controllers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import grpc

from pinet.api.network.v1 import network_pb2_grpc, policy_pb2_grpc
from pinet.etcd.keyspace import TOKENS
from pinet.etcd.lease import LeaderElection
from pinet.runtime.errors import ApiError
from pinet.runtime.service import BaseApp, Runtime, main_for
from services.network.api import AdminServicer, NetworkServicer
from services.network.audit import audit_servicer
from services.network.auth import TokenStore, token_hash
from services.network.controllers import run_controllers
from services.network.deps import Deps
from services.network.informers import ClusterView
from services.network.ipam_client import IpamClient
from services.network.policies_api import PolicyServicer
from services.network.tenants import Tenants

log = logging.getLogger(__name__)


class NetworkApp(BaseApp):
    name = "network"
    default_listen = "127.0.0.1:7700"
    # Users reach the API with bearer tokens, not certificates.
    client_certificates = False

    def __init__(self) -> None:
        self.deps: Deps | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ipam", default="127.0.0.1:7701", help="address of the ipam service")
        parser.add_argument(
            "--bootstrap-dir",
            default="",
            help="write an admin token (admin-token) and a token of tenant `default` (token) here if they are "
            "missing or no longer valid; the local stack uses .pinet",
        )

    def setup(self, rt: Runtime) -> None:
        view = ClusterView(rt.etcd)
        ipam = IpamClient(rt.args.ipam, rt.tls)
        rt.reopeners.append(ipam.reopen)
        self.deps = Deps(rt.etcd, view, ipam, Tenants(rt.etcd, view, ipam), TokenStore(rt.etcd, view.tokens))
        rt.add_servicer(
            "pinet.network.v1.AdminService",
            network_pb2_grpc.add_AdminServiceServicer_to_server,
            audit_servicer(AdminServicer(self.deps), self.deps.tokens.caller),
        )
        rt.add_servicer(
            "pinet.network.v1.NetworkService",
            network_pb2_grpc.add_NetworkServiceServicer_to_server,
            audit_servicer(NetworkServicer(self.deps), self.deps.tokens.caller),
        )
        rt.add_servicer(
            "pinet.network.v1.PolicyService",
            policy_pb2_grpc.add_PolicyServiceServicer_to_server,
            audit_servicer(PolicyServicer(self.deps), self.deps.tokens.caller),
        )

    async def start(self, rt: Runtime) -> None:
        assert self.deps is not None
        await rt.etcd.wait_ready(timeout=60)
        await self.deps.view.start()
        if rt.args.bootstrap_dir:
            # ipam may still be starting (or restarting): wait for it.
            for attempt in range(120):
                try:
                    await self.bootstrap(Path(rt.args.bootstrap_dir))
                    break
                except ApiError as exc:
                    if exc.code != grpc.StatusCode.UNAVAILABLE or attempt == 119:
                        raise
                    log.info("bootstrap waits for ipam: %s", exc.message)
                    await asyncio.sleep(0.5)
        election = LeaderElection(rt.etcd, "network-controllers", f"{rt.args.node_name}:{rt.bound_port}")
        deps = self.deps
        rt.spawn(election.run(lambda: run_controllers(deps)), "network-controllers")

    async def bootstrap(self, directory: Path) -> None:
        assert self.deps is not None
        for filename, tenant, admin in (("admin-token", "admin", True), ("token", "default", False)):
            path = directory / filename
            token = await asyncio.to_thread(_read_token, path)
            if token and TOKENS.key(token_hash(token)) in self.deps.tokens.informer:
                continue
            await self.deps.tenants.ensure(tenant)
            token, _ = await self.deps.tokens.issue(tenant, admin, f"bootstrap {filename}")
            await asyncio.to_thread(_write_token, path, token)
            log.info("wrote a %s token for tenant %s to %s", "admin" if admin else "tenant", tenant, path)

    async def stop(self) -> None:
        if self.deps is not None:
            await self.deps.view.stop()
            await self.deps.tokens.informer.stop()
            await self.deps.ipam.close()


def _read_token(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _write_token(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def app_factory() -> NetworkApp:
    return NetworkApp()


def main() -> None:
    main_for(app_factory())
