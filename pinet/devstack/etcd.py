"""Runs a single-node etcd server as a child process (dev stack and tests).

Given a PKI directory (pinet pki), etcd speaks only TLS, takes only clients
with a certificate of the cluster CA (--client-cert-auth: the certificate's
common name is the user) and, once grant_roles has run, gives each user no
more than pinet.etcd.rbac grants it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from pinet.etcd import rbac
from pinet.etcd.client import Etcd
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles

#: etcd's own administrator: manages users and roles, and is what tests read with.
ETCD_ROOT = Identity("root")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str:
    path = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.path.exists(path):
        raise FileNotFoundError("etcd is not installed (Debian package etcd-server; scripts/up installs it)")
    return path


class EtcdServer:
    """A single-node etcd with its data in data_dir, on loopback."""

    def __init__(
        self,
        data_dir: Path,
        client_port: int | None = None,
        peer_port: int | None = None,
        log_path: Path | None = None,
        name: str = "pinet",
        pki: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}.log"
        self.name = name
        self.pki = pki
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.pki else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def tls(self, identity: Identity = ETCD_ROOT) -> Tls | None:
        """TLS as identity (etcd's root user by default), None without PKI."""
        if self.pki is None:
            return None
        return Tls(TlsFiles.in_directory(self.pki, identity), identity)

    def client(self, identity: Identity = ETCD_ROOT, timeout: float = 5.0) -> Etcd:
        """A client of this etcd (not yet connected)."""
        return Etcd(self.endpoint, timeout, self.tls(identity))

    async def grant_roles(self, nodes: Iterable[str]) -> list[str]:
        """Give every identity of a cluster with these nodes its etcd user
        and role, and turn auth on. Idempotent; a no-op without PKI."""
        if self.pki is None:
            return []
        async with self.client() as etcd:
            return await rbac.apply(etcd, rbac.users(nodes))

    def _tls_flags(self) -> list[str]:
        if self.pki is None:
            return []
        return [
            "--cert-file", str(self.pki / "etcd.crt"),
            "--key-file", str(self.pki / "etcd.key"),
            "--trusted-ca-file", str(self.pki / "ca.crt"),
            "--client-cert-auth",
        ]  # fmt: skip

    def command(self) -> list[str]:
        client = self.endpoint
        # The peer port is loopback-only and this etcd has no peers.
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
            "--logger",
            "zap",
            # A dev/test etcd need not fsync every write to be useful.
            "--unsafe-no-fsync",
            # Idle informers learn how far etcd has got once a second.
            "--experimental-watch-progress-notify-interval",
            "1s",
            "--quota-backend-bytes",
            str(4 * 1024**3),
            *self._tls_flags(),
        ]

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    pass
                if self._health_ok():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd did not become healthy within {timeout}s; see {self.log_path}")

    def _health_ok(self) -> bool:
        import urllib.request

        context = None
        if self.pki is not None:
            context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            context.check_hostname = False
            context.load_cert_chain(str(self.pki / "root.crt"), str(self.pki / "root.key"))
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
