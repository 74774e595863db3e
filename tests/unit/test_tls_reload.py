"""A server takes rotated certificate files on its next handshake, whoever
looked at the files first (regression: when a client channel's refresh
took the new files before the server's handshake hook did, the server
kept its old certificate until restarted)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from pinet.pki import authority
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles
from tests.helpers.tls import serial_served

IPAM = Identity("ipam")
CALLER = Identity("admin")


async def test_a_rotation_seen_first_by_the_client_side_reaches_the_server(tmp_path: Path) -> None:
    authority.ensure(tmp_path, [IPAM, CALLER])
    own = Tls(TlsFiles.in_directory(tmp_path, IPAM), IPAM)
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", own.server_credentials())
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        first = await asyncio.to_thread(serial_served, address, tmp_path, CALLER)
        authority.ensure(tmp_path, [IPAM, CALLER], rotate=True)
        assert await asyncio.to_thread(serial_served, address, tmp_path, CALLER) != first, "taken at the handshake"
        second = await asyncio.to_thread(serial_served, address, tmp_path, CALLER)
        authority.ensure(tmp_path, [IPAM, CALLER], rotate=True)
        # The service's file follower (or a new client channel) looks first.
        before = own.version
        assert own.refresh() == before + 1
        third = await asyncio.to_thread(serial_served, address, tmp_path, CALLER)
        assert third != second, "the server serves what the client side took"
        assert await asyncio.to_thread(serial_served, address, tmp_path, CALLER) == third, "and keeps it"
    finally:
        await server.stop(None)
