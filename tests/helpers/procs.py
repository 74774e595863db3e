"""Start pinet services as real processes for tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pinet.devstack.etcd import free_port
from pinet.runtime.probe import wait_serving

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_DIR = Path(tempfile.gettempdir()) / "pinet-test-logs"


class ServiceProcess:
    def __init__(
        self, service: str, etcd: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
        metrics: bool = False,
    ) -> None:  # fmt: skip
        self.service = service
        self.etcd = etcd
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics = f"127.0.0.1:{free_port()}" if metrics else ""
        self.args = [*args, *(["--metrics", self.metrics] if metrics else [])]
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        # Logs stay after the test for whoever debugs it.
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{service}-{self.port}.log"
        self.stderr = ""

    async def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"pinet.services.{self.service}",
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
            await wait_serving(self.address, timeout)
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
