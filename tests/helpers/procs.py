"""Start pinet services as real processes for tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from pinet.devstack.etcd import free_port
from pinet.pki.identity import Identity
from pinet.runtime.probe import wait_serving
from tests.helpers import tls

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_DIR = Path(tempfile.gettempdir()) / "pinet-test-logs"


class ServiceProcess:
    def __init__(
        self, service: str, etcd: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
        metrics: bool = False, insecure: bool = False,
    ) -> None:  # fmt: skip
        """A service with its own certificate from the test PKI (and its
        etcd role), or plaintext with insecure (against an http:// etcd)."""
        self.service = service
        self.etcd = etcd
        self.insecure = insecure
        node = list(args)[list(args).index("--node-name") + 1] if "--node-name" in args else "test-node"
        #: Who the service runs as.
        self.identity = Identity.for_service(service, node)
        self.node = node
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics = f"127.0.0.1:{free_port()}" if metrics else ""
        tls_args = ["--insecure"] if insecure else ["--tls-dir", str(tls.pki())]
        if "--node-name" not in args:
            tls_args += ["--node-name", node]
        self.args = [*tls_args, *args, *(["--metrics", self.metrics] if metrics else [])]
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        # Logs stay after the test for whoever debugs it.
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{service}-{self.port}.log"
        self.stderr = ""

    def channel(self, identity: Identity = tls.ADMIN) -> grpc.aio.Channel:
        """A channel to this service, as identity (admin by default)."""
        if self.insecure:
            return grpc.aio.insecure_channel(self.address)
        return tls.channel(self.address, self.identity, identity)

    async def start(self, timeout: float = 30.0) -> ServiceProcess:
        if not self.insecure:
            tls.ensure(self.identity)
            await tls.grant(self.etcd, self.identity)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{self.service}",
            "--etcd",
            self.etcd,
            "--listen",
            self.address,
            "--log-format",
            "text",
            *self.args,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.log_path, "wb"),
        )
        try:
            probe = None if self.insecure else tls.tls(tls.MONITOR)
            await wait_serving(self.address, timeout, tls=probe, peer=self.identity)
        except TimeoutError:
            await self.kill()
            raise
        return self

    async def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), timeout)
        self.stderr = self.log_path.read_text(errors="replace")
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
