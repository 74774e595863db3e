"""Running a command-line tool (ip, conntrack), in this namespace or inside
a named one. Used where no library call does the job; every other kernel
change goes through netlink or libnftables."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class KernelError(Exception):
    pass


def run(
    args: Sequence[str], *, netns: str = "", stdin: str | None = None, timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs args (through `ip netns exec` when netns is given). With check, a
    non-zero exit raises KernelError with the command and what it printed."""
    argv = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=timeout)
    if check and out.returncode != 0:
        raise KernelError(f"{' '.join(argv[:6])}{'...' if len(argv) > 6 else ''}: {out.stderr.strip()}")
    return out
