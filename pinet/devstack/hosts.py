"""Simulated hosts for tests and the local stack, all in namespaces:

    pinet-underlay     a bridge: the hosts' shared L2 network
    pinet-host-<N>     host N, 192.0.2.1N/24 on the underlay, default route via the internet
    pinet-internet     "the internet": 192.0.2.1/24, where a test web server lives

With an ident (tests) the names are pinet-<ident>-underlay, -h<N> and -inet,
so that several labs can exist side by side.

Nothing is added to the root namespace: every link is created inside these
namespaces. teardown() removes them and every namespace their agents made.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pinet.hostnet.command import run

UNDERLAY_NET = "192.0.2"
INTERNET_IP = f"{UNDERLAY_NET}.1"
# Documentation ranges the dev stack and tests take floating IPs from.
FLOATING_POOLS = ("203.0.113.0/24", "198.51.100.0/24")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(args, timeout=60, check=check)


def netns_names() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class SimulatedHosts:
    ident: str = "lab"
    count: int = 2
    hosts: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"pinet-{self.ident}-" if self.ident else "pinet-"

    @property
    def underlay(self) -> str:
        return f"{self.prefix}underlay"

    @property
    def internet(self) -> str:
        return f"{self.prefix}inet" if self.ident else "pinet-internet"

    def host(self, n: int) -> str:
        return f"{self.prefix}h{n}" if self.ident else f"pinet-host-{n}"

    def owns(self, netns: str) -> bool:
        """Namespaces of this lab: its own and those its hosts' agents made."""
        if self.ident:
            return netns.startswith(self.prefix)
        hosts = [self.host(n) for n in range(1, self.count + 1)]
        return netns in (self.underlay, self.internet, *hosts) or any(netns.startswith(h + "-") for h in hosts)

    def underlay_ip(self, n: int) -> str:
        return f"{UNDERLAY_NET}.{10 + n}"

    def setup(self) -> SimulatedHosts:
        self.teardown()
        try:
            sh("ip", "netns", "add", self.underlay)
            sh("ip", "-n", self.underlay, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.underlay, "link", "set", "br0", "up")
            self._attach(self.internet, "inet", INTERNET_IP)
            for pool in FLOATING_POOLS:
                # The hosts answer ARP for the floating IPs they serve.
                sh("ip", "-n", self.internet, "route", "add", pool, "dev", "eth0")
            for n in range(1, self.count + 1):
                self.hosts.append(self.host(n))
                self._attach(self.host(n), f"h{n}", self.underlay_ip(n))
                sh("ip", "-n", self.host(n), "route", "add", "default", "via", INTERNET_IP)
        except Exception:
            self.teardown()
            raise
        return self

    def _attach(self, netns: str, port: str, address: str) -> None:
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", self.underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "-n", self.underlay, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")

    @property
    def expose_link(self) -> str:
        return f"pinet-{self.ident}-x"[:15] if self.ident else "pinet-expose"  # link names: 15 bytes at most

    def expose(self) -> list[str]:
        """Lets this machine's own shell reach the floating IPs: a veth from
        the root namespace into the simulated internet and one route per
        floating pool there (nothing else changes in the root namespace).
        Returns the routes added."""
        link, inner = self.expose_link, "expose0"
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", inner, "netns", self.internet)
        sh("ip", "link", "set", link, "up")
        sh("ip", "-n", self.internet, "link", "set", inner, "up")
        # The internet answers ARP for the pools on that link, forwards to the
        # hosts, and sends replies back to the machine over it.
        self.exec(self.internet, "sysctl", "-qw", f"net.ipv4.conf.{inner}.proxy_arp=1", "net.ipv4.ip_forward=1")
        sh("ip", "-n", self.internet, "route", "add", "default", "dev", inner)
        # The machine's own address may lie anywhere (even in the underlay's
        # range), so what comes in over the link leaves as the internet's.
        nat = (
            "table ip pinet-expose {\n chain postrouting {\n  type nat hook postrouting priority srcnat;\n"
            f'  iifname "{inner}" masquerade\n }}\n}}\n'
        )
        out = self.exec(self.internet, "nft", "-f", "-", stdin=nat)
        if out.returncode != 0:
            raise RuntimeError(f"nat in {self.internet}: {out.stderr.strip()}")
        for pool in FLOATING_POOLS[:1]:
            sh("ip", "route", "add", pool, "dev", link)
            # Replies go back to the address this machine sends from, which
            # may even lie in the underlay's range: a host route wins.
            probe = str(ipaddress.IPv4Network(pool).network_address + 1)
            source = json.loads(sh("ip", "-j", "route", "get", probe).stdout)[0].get("prefsrc")
            if source:
                sh("ip", "-n", self.internet, "route", "replace", f"{source}/32", "dev", inner)
        return [f"{pool} dev {link}" for pool in FLOATING_POOLS[:1]]

    def unexpose(self) -> None:
        sh("ip", "link", "del", self.expose_link, check=False)

    def teardown(self) -> None:
        self.unexpose()
        for name in netns_names():
            if self.owns(name):
                sh("ip", "netns", "del", name, check=False)
        for path in Path("/etc/netns").glob("pinet*"):
            if self.owns(path.name):
                shutil.rmtree(path, ignore_errors=True)
        self.hosts.clear()

    def exec(
        self, netns: str, *args: str, timeout: float = 30, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(args, netns=netns, stdin=stdin, timeout=timeout, check=False)
