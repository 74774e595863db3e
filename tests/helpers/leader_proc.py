"""A replica that campaigns for leadership and, while leader, records itself
under /pinet-test/leader/<name>. Run by the leader election test."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pinet.etcd.client import Etcd
from pinet.etcd.lease import LeaderElection
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles


async def main(endpoint: str, name: str, identity: str, pki: str) -> None:
    root = Identity("root")
    etcd = await Etcd(endpoint, tls=Tls(TlsFiles.in_directory(Path(pki), root), root)).connect()
    election = LeaderElection(etcd, name, identity, ttl=2)

    async def lead() -> None:
        await etcd.put(f"/pinet-test/leader/{name}".encode(), identity.encode())
        await asyncio.Event().wait()

    await election.run(lead)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
