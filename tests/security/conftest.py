"""A little cloud under attack: two simulated hosts with agents, load
balancers and DNS; tenant "mallory" runs the attacker's pods, tenant
"victim" a web service behind a floating IP; sentinels stand in for the
infrastructure the attacker must not reach."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.devstack.etcd import EtcdServer
from pinet.devstack.hosts import INTERNET_IP
from tests.helpers.cloud import Cloud, running_cloud
from tests.helpers.platform import Tenant
from tests.helpers.services import service
from tests.helpers.traffic import connect, serve
from tests.helpers.wait import eventually
from tests.security.attacks import Sentinel, run_in

PROTECTED = "172.31.254.0/24"  # stands for the control-plane network
CONTROL_PLANE_IP = "172.31.254.1"  # in the internet namespace, reached through the hosts' default route
METADATA_IP = "169.254.169.254"
CONNTRACK_LIMIT = 300
INFRA_PORT = 7999  # where the sentinels listen for attacks
CONTROL_PORT = 7998  # where they listen for the tests' own checks that they are reachable at all
POD_PORT = 7001  # sentinels in the pods
WEB_PORT = 8000


def other_address(n: int) -> str:
    """A second address of host n (as a host's docker0 or management address)."""
    return f"172.30.0.{n}"


@dataclass
class Lab:
    cloud: Cloud
    mallory: Tenant
    victim: Tenant
    pods: dict[str, objects_pb2.Pod]
    fip: str
    backend_ip: str
    node_port: int
    vnis: dict[str, int]
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, pod: str) -> str:
        return self.cloud.pod_netns(self.pods[pod])

    def ip(self, pod: str) -> str:
        return str(self.pods[pod].status.pod_ip)

    def router(self, tenant: str, n: int) -> str:
        return f"{self.cloud.hosts.host(n)}-r{self.vnis[tenant]}"

    def host(self, n: int) -> str:
        return self.cloud.hosts.host(n)

    def nft(self, netns: str, *args: str) -> str:
        out = self.cloud.hosts.exec(netns, "nft", *args)
        assert out.returncode == 0, f"nft {' '.join(args)} in {netns}: {out.stderr}"
        return str(out.stdout)

    @contextlib.contextmanager
    def sentinels(self, places: dict[str, str], ports: tuple[int, ...]) -> Iterator[dict[str, Sentinel]]:
        """tag -> sentinel listening in that namespace on ports."""
        started = {tag: Sentinel(netns, ports, tag).start() for tag, netns in places.items()}
        try:
            yield started
        finally:
            for s in started.values():
                s.contacts()

    def legitimate_traffic(self) -> None:
        """What a well-behaved tenant does still works: pod to pod across
        hosts, a ClusterIP, the floating IP from the internet, DNS, egress."""
        c, attacker = self.cloud, self.ns("attacker")
        assert connect(c, attacker, self.ip("remote"), WEB_PORT).startswith("remote "), "pod to pod across hosts"
        assert connect(c, attacker, self.backend_ip, 80).startswith("remote "), "ClusterIP"
        assert connect(c, c.hosts.internet, self.fip, 8080).split()[0] in ("v1", "v2"), "floating IP"
        resolved = run_in(attacker, "import socket; print(socket.gethostbyname('backend.default.svc.cluster.local'))")
        assert resolved.strip() == self.backend_ip, "DNS"
        assert connect(c, attacker, INTERNET_IP, 8088).startswith("internet "), "egress to the internet"


def _sh(netns: str, *args: str) -> None:
    out = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"ip -n {netns} {' '.join(args)}: {out.stderr}"


def _stand_ins(cloud: Cloud) -> None:
    """Addresses infrastructure would have: each host a second address
    (routed from the other host) and the metadata address; the control
    plane beyond the hosts' default route."""
    hosts = cloud.hosts
    # On lo: this kernel has no dummy devices, and a local address is a
    # local address wherever it sits.
    for n in (1, 2):
        host = hosts.host(n)
        for address in (other_address(n), METADATA_IP):
            _sh(host, "addr", "add", f"{address}/32", "dev", "lo")
        other = 3 - n
        _sh(host, "route", "add", other_address(other), "via", hosts.underlay_ip(other))
    _sh(hosts.internet, "addr", "add", f"{CONTROL_PLANE_IP}/32", "dev", "lo")


@pytest.fixture(scope="module")
async def lab(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    agent_args = ["--protected-cidrs", PROTECTED, "--conntrack-limit", str(CONNTRACK_LIMIT), "--guard-interval", "0.5"]
    async with running_cloud(
        etcd_server.endpoint, tmp_path_factory.mktemp("security"), hosts_count=2, floating="203.0.113.0/24",
        lb_args=["--backend", "nftables"], agent_args=agent_args, dns=True,
    ) as cloud:  # fmt: skip
        await asyncio.to_thread(_stand_ins, cloud)
        h1, h2 = cloud.hosts.host(1), cloud.hosts.host(2)
        mallory, victim = await cloud.tenant("mallory"), await cloud.tenant("victim")
        pods = {
            "attacker": await cloud.run_pod(mallory, "attacker", h1),
            "neighbour": await cloud.run_pod(mallory, "neighbour", h1),
            "flooder": await cloud.run_pod(mallory, "flooder", h1),
            "remote": await cloud.run_pod(mallory, "remote", h2, {"app": "backend"}),
            "v1": await cloud.run_pod(victim, "v1", h1, {"app": "web"}),
            "v2": await cloud.run_pod(victim, "v2", h2, {"app": "web"}),
        }
        backend = await mallory.call("CreateService", service("backend", {"app": "backend"}, [(80, WEB_PORT)]))
        fip = (await victim.call("AllocateFloatingIP", network_pb2.AllocateFloatingIPRequest())).address
        web = await victim.call(
            "CreateService", service("web", {"app": "web"}, [(8080, WEB_PORT)], objects_pb2.SERVICE_TYPE_LOAD_BALANCER,
                                     fip=fip),
        )  # fmt: skip
        vnis = {}
        for t in (mallory, victim):
            vnis[t.name] = (await t.call("WhoAmI", network_pb2.WhoAmIRequest())).tenant_info.network.vni
        lab = Lab(cloud, mallory, victim, pods, fip, backend.spec.cluster_ip, web.spec.ports[0].node_port, vnis)
        for name in ("remote", "v1", "v2", "neighbour"):
            lab.servers.append(serve(lab.ns(name), WEB_PORT, name))
        lab.servers.append(serve(cloud.hosts.internet, 8088, "internet"))
        try:
            for check in (
                lambda: connect(cloud, lab.ns("attacker"), lab.backend_ip, 80).startswith("remote"),
                lambda: connect(cloud, cloud.hosts.internet, fip, 8080).startswith("v"),
            ):
                await eventually(lambda check=check: asyncio.to_thread(check), "the services answer", timeout=30)  # type: ignore[misc]
            yield lab
        finally:
            for proc in lab.servers:
                proc.kill()


def run_py(netns: str, code: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True, text=True, check=False
    ).stdout
