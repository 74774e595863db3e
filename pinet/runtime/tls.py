"""TLS for every pinet listener and connection, from certificate files.

A service finds its files from flags (or PINET_* variables): --tls-dir
holding ca.crt and <identity>.crt/.key (the layout `pinet pki` writes), or
--tls-ca/--tls-cert/--tls-key for operator-provided files. Plaintext only
with --insecure, which says so in the log.

Servers reload their certificate, key and CA when the files change (grpc
asks before every new connection's handshake; a stat of three files), so a
rotation needs no restart. Connections already open keep the session they
negotiated. A channel's client credentials are fixed when it opens, so the
runtime looks at the files every few seconds and, when they changed, each
long-lived client (etcd, the network service's ipam client) opens a new
channel: a reconnect after the old certificate expired would fail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pinet.pki.authority import pair_matches
from pinet.pki.identity import Identity

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    pass


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-dir", default="", help="directory with ca.crt and this service's <identity>.crt/.key (pinet pki)"
    )
    parser.add_argument("--tls-ca", default="", help="CA certificate file (default: <tls-dir>/ca.crt)")
    parser.add_argument("--tls-cert", default="", help="certificate file (default: <tls-dir>/<identity>.crt)")
    parser.add_argument("--tls-key", default="", help="private key file (default: <tls-dir>/<identity>.key)")
    parser.add_argument(
        "--tls-poll", type=float, default=5.0,
        help="seconds between looks at the TLS files, to reopen client channels after a rotation",
    )  # fmt: skip
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC with no identities and no authorization (benchmarks and debugging only)",
    )


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path, identity: Identity) -> TlsFiles:
        return cls(
            directory / "ca.crt", directory / f"{identity.file_stem}.crt", directory / f"{identity.file_stem}.key"
        )

    def stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.ca, self.cert, self.key):
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)


def files_from_args(args: argparse.Namespace, identity: Identity) -> TlsFiles | None:
    """The files to use, or None with --insecure. Raises TlsConfigError
    with what to give when neither is set or a file is missing."""
    if args.insecure:
        return None
    directory = Path(args.tls_dir) if args.tls_dir else None
    defaults = TlsFiles.in_directory(directory, identity) if directory else None
    ca = Path(args.tls_ca) if args.tls_ca else defaults.ca if defaults else None
    cert = Path(args.tls_cert) if args.tls_cert else defaults.cert if defaults else None
    key = Path(args.tls_key) if args.tls_key else defaults.key if defaults else None
    if ca is None or cert is None or key is None:
        raise TlsConfigError(
            "TLS is required: give --tls-dir (or --tls-ca, --tls-cert and --tls-key); "
            "--insecure turns it off for benchmarks and debugging"
        )
    for what, path in (("CA", ca), ("certificate", cert), ("key", key)):
        if not path.is_file():
            raise TlsConfigError(f"the {what} file {path} does not exist (identity {identity}; see `pinet pki`)")
    return TlsFiles(ca, cert, key)


class Tls:
    """One identity's TLS material, for serving and for connecting."""

    def __init__(self, files: TlsFiles, identity: Identity) -> None:
        self.files = files
        self.identity = identity
        self._lock = threading.Lock()
        #: Bumped whenever the files are taken again.
        self.version = 0
        self._stamp = files.stamp()
        self._ca, self._cert, self._key = self._read()
        if not pair_matches(self._cert, self._key):
            raise TlsConfigError(f"{files.key} is not the key of {files.cert}")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return self.files.ca.read_bytes(), self.files.cert.read_bytes(), self.files.key.read_bytes()

    def _server_config(self) -> Any:
        return grpc.ssl_server_certificate_configuration([(self._key, self._cert)], root_certificates=self._ca)

    def _reload_if_changed(self) -> bool:
        """Take the files again if they changed and make a whole, matching
        pair; a half-written rotation is taken at the next look."""
        with self._lock:
            try:
                stamp = self.files.stamp()
                if stamp == self._stamp:
                    return False
                ca, cert, key = self._read()
            except OSError:
                return False
            if not pair_matches(cert, key):
                return False
            self._stamp = stamp
            self._ca, self._cert, self._key = ca, cert, key
            self.version += 1
        log.info("reloaded TLS files of %s (%s)", self.identity, self.files.cert)
        return True

    def refresh(self) -> int:
        """Take the files again if they changed; returns the version."""
        self._reload_if_changed()
        return self.version

    def server_credentials(self, require_client_certificate: bool = True) -> grpc.ServerCredentials:
        """Credentials that take the files again when they change. With
        require_client_certificate a caller without a certificate of the
        cluster CA is refused in the handshake."""

        # The version this server was last given, not whether this look
        # found the change: the client side (refresh, channel_credentials)
        # may have taken the new files first, and the server must follow.
        with self._lock:
            served, initial = self.version, self._server_config()

        def fetch() -> Any:
            nonlocal served
            self._reload_if_changed()
            with self._lock:
                if self.version == served:
                    return None
                served = self.version
                return self._server_config()

        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=require_client_certificate
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        self._reload_if_changed()
        return grpc.ssl_channel_credentials(self._ca, self._key, self._cert)


def channel_options(peer: Identity | None, options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Verify the server as the identity it must be, whatever address it
    was reached at (peer None: as the address's own name)."""
    if peer is None:
        return list(options)
    return [("grpc.ssl_target_name_override", peer.dns_name), *options]


def aio_channel(
    tls: Tls | None, address: str, peer: Identity | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to the service `peer` at address, over mTLS as tls's
    identity (plaintext when tls is None: --insecure)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=channel_options(peer, options))


def sync_channel(
    tls: Tls | None, address: str, peer: Identity | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.channel_credentials(), options=channel_options(peer, options))


Reopen = Callable[[], Awaitable[None]]


async def follow_files(tls: Tls, reopeners: list[Reopen], interval: float = 5.0) -> None:
    """Every interval, whether the files changed; if so, every long-lived
    client opens a new channel with them."""
    seen = tls.version
    while True:
        await asyncio.sleep(interval)
        version = await asyncio.to_thread(tls.refresh)
        if version == seen:
            continue
        seen = version
        log.info("TLS files of %s changed: reopening %d client channel(s)", tls.identity, len(reopeners))
        for reopen in list(reopeners):
            try:
                await reopen()
            except Exception as exc:  # a client that cannot reopen keeps its old channel
                log.warning("reopening a client channel with the new TLS files failed: %r", exc)


class RetiredChannels:
    """Channels a client replaced (reopen after a rotation), closed once the
    calls in flight on them had time to end; streams on them end then, and
    their owners resume on the new channel."""

    def __init__(self, grace: float = 30.0) -> None:
        self.grace = grace
        self._closing: dict[asyncio.Future[None], grpc.aio.Channel] = {}

    def retire(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.ensure_future(self._close_later(channel))
        self._closing[task] = channel
        task.add_done_callback(lambda t: self._closing.pop(t, None))

    async def _close_later(self, channel: grpc.aio.Channel) -> None:
        await asyncio.sleep(self.grace)
        await channel.close(None)

    async def close_now(self) -> None:
        for task, channel in list(self._closing.items()):
            task.cancel()
            await channel.close(None)
