"""`pi`: the user's command line for pinet."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

DEFAULT_API = "127.0.0.1:7700"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi", description="Use the pinet network API.")
    parser.add_argument(
        "--server",
        default=os.environ.get("PINET_API", DEFAULT_API),
        help="network API address [env PINET_API]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("status", help="check that the network API answers")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        from pinet import __version__

        print(f"pi {__version__}")
        return
    if args.command == "status":
        from pinet.runtime.probe import check

        status = asyncio.run(check(args.server))
        print(f"{args.server}: {status}")
        sys.exit(0 if status == "SERVING" else 1)
    parser.print_help()
    sys.exit(2)
