"""`pinet SERVICE [flags]` runs one pinet service; `pinet stack` runs them all."""

from __future__ import annotations

import importlib
import sys

SERVICES = ("ipam", "network", "netagent", "lb", "dns")

USAGE = f"""usage: pinet COMMAND [flags]

commands:
  {" | ".join(SERVICES)}   run that service (pinet ipam --help for its flags)
  stack                    run etcd and every service locally
  health ADDRESS [SERVICE] check a gRPC service's health over mTLS (exit 0 when SERVING)
  pki init|issue|rotate|list  the cluster CA and service certificates (.pinet/pki)
  etcd-roles               give each identity its etcd user and role, turn etcd's auth on
  web POD                  serve a page naming POD on port 80 (run it in the pod: pi exec POD -- pinet web POD)
  version                  print the version
"""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command in SERVICES:
        app_module = importlib.import_module(f"services.{command}.app")
        from pinet.runtime.service import run

        sys.exit(run(app_module.app_factory(), rest))
    if command == "stack":
        from pinet.devstack.stack import main as stack_main

        sys.exit(stack_main(rest))
    if command == "web":
        from pinet.devstack.web import main as web_main

        sys.exit(web_main(rest))
    if command in ("health", "pki", "etcd-roles"):
        from pinet.cli import pki

        tools = {"health": pki.health_main, "pki": pki.pki_main, "etcd-roles": pki.etcd_roles_main}
        sys.exit(tools[command](rest))
    if command == "version":
        from pinet import __version__

        print(f"pinet {__version__}")
        sys.exit(0)
    print(f"pinet: unknown command {command!r}; run `pinet --help`", file=sys.stderr)
    sys.exit(2)
