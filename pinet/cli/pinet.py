"""`pinet SERVICE [flags]` runs one pinet service; `pinet stack` runs them all."""

from __future__ import annotations

import asyncio
import importlib
import sys

SERVICES = ("ipam", "network", "netagent", "lb", "dns")

USAGE = f"""usage: pinet COMMAND [flags]

commands:
  {" | ".join(SERVICES)}   run that service (pinet ipam --help for its flags)
  stack                    run etcd and every service locally
  health ADDRESS [SERVICE] check a gRPC service's health (exit 0 when SERVING)
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
        app_module = importlib.import_module(f"pinet.services.{command}.app")
        from pinet.runtime.service import run

        sys.exit(run(app_module.app_factory(), rest))
    if command == "stack":
        from pinet.devstack.stack import main as stack_main

        sys.exit(stack_main(rest))
    if command == "web":
        from pinet.devstack.web import main as web_main

        sys.exit(web_main(rest))
    if command == "health":
        if not rest:
            print("usage: pinet health ADDRESS [SERVICE]", file=sys.stderr)
            sys.exit(2)
        from pinet.runtime.probe import check

        status = asyncio.run(check(rest[0], rest[1] if len(rest) > 1 else ""))
        print(f"status: {status}")
        sys.exit(0 if status == "SERVING" else 1)
    if command == "version":
        from pinet import __version__

        print(f"pinet {__version__}")
        sys.exit(0)
    print(f"pinet: unknown command {command!r}; run `pinet --help`", file=sys.stderr)
    sys.exit(2)
