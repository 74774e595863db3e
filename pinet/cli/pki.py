"""`pinet pki`, `pinet etcd-roles` and `pinet health`: the operator's tools
for the cluster's certificates, etcd's users and roles, and probing a
service over TLS."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path

from pinet.pki import authority
from pinet.pki.identity import Identity, IdentityError, cluster_identities

DEFAULT_DIR = ".pinet/pki"


def _identities(args: argparse.Namespace) -> list[Identity]:
    if args.identity:
        return [Identity.parse(i) for i in args.identity]
    return cluster_identities(args.node or [])


def pki_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pinet pki",
        description="Create the cluster CA and service certificates, renew or rotate them, list them. "
        "Services reload rotated files without a restart.",
    )
    parser.add_argument("action", choices=["init", "issue", "rotate", "list"], help=(
        "init: the CA and every missing, foreign or expiring certificate; issue: the same for --identity only; "
        "rotate: new keys and certificates for every identity (same CA); list: what the directory holds"
    ))  # fmt: skip
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"PKI directory (default {DEFAULT_DIR})")
    parser.add_argument("--node", action="append", help="a node of the cluster (netagent/NODE, lb/NODE); repeat")
    parser.add_argument("--identity", action="append", help="only this identity, e.g. network or lb/host-1; repeat")
    parser.add_argument("--dns", action="append", default=[], help="an extra DNS name for the certificates")
    parser.add_argument("--ip", action="append", default=[], help="an extra IP address for the certificates")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    try:
        if args.action == "list":
            return _list(directory)
        identities = _identities(args)
        if args.action == "issue" and not args.identity:
            parser.error("issue needs --identity")
        issued = authority.ensure(directory, identities, args.dns, args.ip, rotate=args.action == "rotate")
    except (IdentityError, authority.PkiError, ValueError, OSError) as exc:
        print(f"pinet pki: {exc}", file=sys.stderr)
        return 1
    print(f"{directory}: issued {', '.join(str(i) for i in issued) or 'nothing (all current)'}")
    return 0


def _list(directory: Path) -> int:
    if not (directory / "ca.crt").exists():
        print(f"pinet pki: no CA in {directory} (pinet pki init)", file=sys.stderr)
        return 1
    now = datetime.datetime.now(datetime.UTC)
    for path in sorted(directory.glob("*.crt")):
        info = authority.certificate_info(path.read_bytes())
        left = (info.not_after - now).days
        state = "EXPIRED" if info.expired else f"{left} days left"
        print(f"{path.name:32} {info.subject:28} until {info.not_after:%Y-%m-%d} ({state})")
    return 0


def etcd_roles_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pinet etcd-roles",
        description="Give every identity its etcd user and role (least privilege) and turn etcd's auth on. "
        "Idempotent; run as etcd's root user (root.crt).",
    )
    parser.add_argument("--etcd", default="https://127.0.0.1:12379", help="etcd endpoint")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="PKI directory holding root.crt/root.key and ca.crt")
    parser.add_argument("--node", action="append", default=[], help="a node of the cluster; repeat")
    args = parser.parse_args(argv)

    from pinet.etcd import rbac
    from pinet.etcd.client import Etcd
    from pinet.etcd.errors import EtcdError
    from pinet.runtime.tls import Tls, TlsFiles

    async def run() -> list[str]:
        root = Identity("root")
        async with Etcd(args.etcd, tls=Tls(TlsFiles.in_directory(Path(args.dir), root), root)) as etcd:
            return await rbac.apply(etcd, rbac.users(args.node))

    try:
        changed = asyncio.run(run())
    except (EtcdError, OSError, ValueError) as exc:
        print(f"pinet etcd-roles: {exc}", file=sys.stderr)
        return 1
    print("\n".join(changed) if changed else "etcd users and roles are as they should be")
    return 0


def health_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pinet health", description="Check a pinet service's gRPC health.")
    parser.add_argument("address")
    parser.add_argument("service", nargs="?", default="")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="PKI directory with ca.crt and the --as identity's pair")
    parser.add_argument("--as", dest="as_identity", default="monitor", help="identity to probe as (monitor)")
    parser.add_argument("--peer", default="", help="the identity the service must prove, e.g. ipam or lb/host-1")
    parser.add_argument("--insecure", action="store_true", help="plaintext, for a service run with --insecure")
    args = parser.parse_args(argv)

    from pinet.runtime.probe import check
    from pinet.runtime.tls import Tls, TlsFiles

    tls = None
    try:
        if not args.insecure:
            me = Identity.parse(args.as_identity)
            tls = Tls(TlsFiles.in_directory(Path(args.dir), me), me)
        peer = Identity.parse(args.peer) if args.peer else None
    except (IdentityError, OSError) as exc:
        print(f"pinet health: {exc} (--dir, --as, or --insecure)", file=sys.stderr)
        return 2
    status = asyncio.run(check(args.address, args.service, tls=tls, peer=peer))
    print(f"status: {status}")
    return 0 if status == "SERVING" else 1
