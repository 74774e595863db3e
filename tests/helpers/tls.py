"""The test run's PKI: one CA, a certificate per identity as tests need it,
and an etcd role for each service identity before it starts."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import grpc
from cryptography import x509

from pinet.devstack.etcd import EtcdServer
from pinet.etcd import rbac
from pinet.pki import authority
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles, aio_channel

PKI = Path(tempfile.gettempdir()) / f"pinet-test-pki-{os.getpid()}"
ADMIN = Identity("admin")
MONITOR = Identity("monitor")

_issued: set[Identity] = set()
_servers: dict[str, EtcdServer] = {}
_granted: set[tuple[str, Identity]] = set()


def pki() -> Path:
    """The directory, with the CA and the identities every test run uses."""
    if not _issued:
        ensure(Identity("etcd"), Identity("root"), ADMIN, MONITOR)
    return PKI


def ensure(*identities: Identity) -> None:
    missing = [i for i in identities if i not in _issued]
    if missing:
        authority.ensure(PKI, missing)
        _issued.update(missing)


def tls(identity: Identity = ADMIN) -> Tls:
    ensure(identity)
    return Tls(TlsFiles.in_directory(pki(), identity), identity)


def channel(address: str, peer: Identity, identity: Identity = ADMIN) -> grpc.aio.Channel:
    """A channel to the service peer at address, as identity."""
    return aio_channel(tls(identity), address, peer)


def remove() -> None:
    shutil.rmtree(PKI, ignore_errors=True)


def start_etcd(server: EtcdServer) -> EtcdServer:
    """Start a test etcd (made with pki=pki()) and remember it, so that each
    service started against it gets its etcd user first."""
    server.start()
    _servers[server.endpoint] = server
    return server


async def grant(endpoint: str, identity: Identity) -> None:
    """Give identity its etcd user and role in the test etcd at endpoint
    (and turn auth on there); idempotent, once per etcd and identity."""
    server = _servers.get(endpoint)
    if server is None or (endpoint, identity) in _granted:
        return
    async with server.client() as etcd:
        await rbac.apply(etcd, [identity])
    _granted.add((endpoint, identity))


def serial_served(address: str, directory: Path | None = None, identity: Identity = ADMIN) -> int:
    """The serial number of the certificate a new TLS connection to the
    gRPC server at address is shown (the directory's CA; the test PKI's
    by default)."""
    directory = directory or pki()
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    context.check_hostname = False
    stem = directory / identity.file_stem
    context.load_cert_chain(f"{stem}.crt", f"{stem}.key")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, context.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)
