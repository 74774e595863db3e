"""Configuration from flags, with PINET_* environment variables as defaults.

Every flag --some-thing can also be given as PINET_SOME_THING; a flag on the
command line wins over the environment, which wins over the built-in default.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from pinet.runtime.tls import add_tls_arguments

ENV_PREFIX = "PINET_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options default to PINET_* variables."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        long_flags = [a for a in args if isinstance(a, str) and a.startswith("--")]
        if long_flags and kwargs.get("action") not in ("help", "version"):
            var = env_name(long_flags[0])
            if var in os.environ:
                raw = os.environ[var]
                if kwargs.get("action") == "store_true":
                    kwargs["default"] = raw.lower() in ("1", "true", "yes", "on")
                else:
                    kwargs["default"] = raw
                    # An environment value satisfies a required flag.
                    kwargs["required"] = False
            help_text = kwargs.get("help")
            if help_text is not None and help_text != argparse.SUPPRESS:
                kwargs["help"] = f"{help_text} [env {var}]"
        return super().add_argument(*args, **kwargs)


def add_common_arguments(parser: argparse.ArgumentParser, default_listen: str) -> None:
    parser.add_argument("--etcd", default="https://127.0.0.1:12379", help="etcd endpoint URL (https unless --insecure)")
    parser.add_argument("--listen", default=default_listen, help="gRPC listen address host:port")
    parser.add_argument("--metrics", default="", help="Prometheus /metrics listen address host:port (empty: off)")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument("--log-format", default="json", choices=["json", "text"], help="log line format")
    parser.add_argument(
        "--shutdown-grace", type=float, default=5.0, help="seconds to finish in-flight calls on SIGTERM"
    )
    parser.add_argument("--node-name", default=os.uname().nodename, help="this host's node name (agents) or replica id")
    add_tls_arguments(parser)


def split_hostport(value: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{what} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)
