"""Runs the local stack (`pinet stack`) for a test, on ports of its own."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pinet.devstack.etcd import free_port
from pinet.devstack.hosts import SimulatedHosts
from pinet.devstack.stack import default_services
from pinet.etcd.client import Etcd
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles
from tests.helpers.procs import ROOT


@dataclass
class Stack:
    state: Path
    etcd_port: int
    offset: int
    lab: str = ""
    proc: subprocess.Popen[str] | None = None
    banner: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"127.0.0.1:{7700 + self.offset}"

    @property
    def etcd(self) -> str:
        return f"https://127.0.0.1:{self.etcd_port}"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    def etcd_client(self) -> Etcd:
        """A client of the stack's etcd as its root user."""
        root = Identity("root")
        return Etcd(self.etcd, tls=Tls(TlsFiles.in_directory(self.pki, root), root))

    def start(self, timeout: float = 120) -> Stack:
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, ".venv/bin/pinet"), "stack", "--state-dir", str(self.state),
             "--etcd-port", str(self.etcd_port), "--port-offset", str(self.offset), "--lab", self.lab],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.banner.append(line)
            if "Press Ctrl-C" in line:
                return self
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError("the stack did not start:\n" + "".join(self.banner))

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rest, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        return rest or ""

    def pi(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PINET_API": self.api, "PINET_TOKEN_FILE": str(self.state / "token"),
               "PINET_CA": str(self.pki / "ca.crt")}  # fmt: skip
        env.pop("PINET_TOKEN", None)
        out = subprocess.run(
            [os.path.join(ROOT, ".venv/bin/pi"), *args], input=stdin, capture_output=True, text=True,
            env=env, timeout=60, check=False,
        )  # fmt: skip
        if check:
            assert out.returncode == 0, f"pi {' '.join(args)} failed: {out.stderr}"
        return out


# Every port handed to a stack of this test run. A module's long-lived stack
# and a test's own stack run side by side, and offsets 2000 apart would put
# one's gRPC ports (7700 + offset) on the other's metrics ports (9700 + offset).
_HANDED_OUT: set[int] = set()


def stack_ports(offset: int) -> set[int]:
    """The loopback ports `pinet stack --port-offset offset` listens on."""
    specs = default_services(SimulatedHosts("x"), offset=offset)
    addresses = [a for spec in specs for a in (spec.listen, spec.metrics, *spec.extra)]
    return {int(a.rsplit(":", 1)[1]) for a in addresses if re.fullmatch(r"127\.0\.0\.1:\d+", a)}


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def new_stack(tmp: Path) -> Stack:
    # Offsets keep every service port below the kernel's ephemeral range
    # (32768 and up), where any client socket of the machine might hold one.
    for _ in range(200):
        offset = random.randrange(10_000, 22_000, 100)
        ports = stack_ports(offset)
        if not ports & _HANDED_OUT and all(_bindable(port) for port in ports):
            _HANDED_OUT.update(ports)
            return Stack(tmp, free_port(), offset, f"s{random.randrange(16**4):04x}")
    raise RuntimeError("no port offset leaves a stack's ports free")
