"""Dropping conntrack entries of UDP flows whose endpoint went.

A UDP "connection" has no end, so without this a client that keeps sending
from one port (a resolver, say) would keep reaching the removed endpoint
until the entry idles out. TCP needs nothing: established connections to a
removed endpoint finish on their own, and new ones are balanced afresh.
"""

from __future__ import annotations

import re

from pinet.hostnet.command import run
from services.lb.model import VsKey


def forget_udp(netns: str, gone: list[tuple[VsKey, str]]) -> list[str]:
    changes = []
    for (vip, _, port), endpoint in gone:
        args = ["conntrack", "-D", "-p", "udp", "--orig-dst", vip, "--orig-port-dst", str(port)]
        args += ["--reply-src", endpoint]
        out = run(args, netns=netns, timeout=10, check=False)
        # conntrack exits 1 when nothing matched, which is the usual case.
        found = re.search(r"(\d+) flow entries have been deleted", out.stderr)
        if found and int(found.group(1)):
            changes.append(f"{netns}: {found.group(1)} udp flows {vip}:{port} -> {endpoint} dropped")
    return changes
