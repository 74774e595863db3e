"""The IPVS backend against a kernel that has ip_vs (run by scripts/test
inside ../shared/ipvs-vm, marked `ipvs`): a tenant router namespace built by
hand, servers and clients in pod namespaces, real TCP through IPVS."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from services.lb.backends.ipvs import IpvsBackend
from services.lb.model import Frontend, RealServer, RouterLb, VirtualService
from tests.helpers.traffic import CHATTER, ECHO, SERVER, many

pytestmark = pytest.mark.ipvs

ROUTER = "pinet-ivs-r"
PODS = {"pinet-ivs-p1": "10.244.0.11", "pinet-ivs-p2": "10.244.0.12", "pinet-ivs-p3": "10.244.0.13",
        "pinet-ivs-c1": "10.244.0.21", "pinet-ivs-c2": "10.244.0.22"}  # fmt: skip
SERVERS = ["pinet-ivs-p1", "pinet-ivs-p2", "pinet-ivs-p3"]
VIP = "10.244.240.10"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def kernel() -> str:
    """What IPVS holds (for failure messages)."""
    listed = subprocess.run(["ip", "netns", "exec", ROUTER, "ipvsadm", "-Ln", "--persistent-conn"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    conns = subprocess.run(
        ["ip", "netns", "exec", ROUTER, "ipvsadm", "-Lnc"], capture_output=True, text=True, check=False
    )
    return listed.stdout + listed.stderr + conns.stdout


def active_connections(ip: str, port: int) -> int:
    """ipvsadm's ActiveConn of a real server (0 when not listed)."""
    listed = subprocess.run(
        ["ip", "netns", "exec", ROUTER, "ipvsadm", "-Ln"], capture_output=True, text=True, check=False
    )
    for line in listed.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["->", f"{ip}:{port}"]:
            return int(fields[4])
    return 0


def router(*servers: str, persistence: int = 0, port: int = 80, target: int = 8000) -> RouterLb:
    vs = VirtualService("t", "default/web", Frontend.CLUSTER_IP, VIP, "tcp", port, persistence=persistence,
                        real_servers=tuple(RealServer(PODS[s], target) for s in servers))  # fmt: skip
    return RouterLb("t", 4096, ROUTER, "10.244.240.0/20", "", {vs.key: vs})


@pytest.fixture(scope="module")
def lab() -> Iterator[list[subprocess.Popen[bytes]]]:
    names = [ROUTER, *PODS]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            ip("netns", "add", name)
        ip("-n", ROUTER, "link", "add", "br0", "type", "bridge")
        ip("-n", ROUTER, "addr", "add", "10.244.0.1/16", "dev", "br0")
        ip("-n", ROUTER, "link", "set", "br0", "up")
        subprocess.run(["ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        for i, (pod, address) in enumerate(PODS.items()):
            ip("-n", ROUTER, "link", "add", f"pv{i}", "type", "veth", "peer", "name", "eth0", "netns", pod)
            ip("-n", ROUTER, "link", "set", f"pv{i}", "master", "br0", "up")
            ip("-n", ROUTER, "link", "set", f"pv{i}", "type", "bridge_slave", "hairpin", "on")
            ip("-n", pod, "addr", "add", f"{address}/16", "dev", "eth0")
            ip("-n", pod, "link", "set", "eth0", "up")
            ip("-n", pod, "link", "set", "lo", "up")
            ip("-n", pod, "route", "add", "10.244.240.0/20", "via", "10.244.0.1")
        for pod in SERVERS:
            procs.append(subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SERVER, "8000", pod]))
        deadline = time.monotonic() + 60
        for pod in SERVERS:
            while many("pinet-ivs-c1", PODS[pod], 8000, 1) != [pod]:
                assert time.monotonic() < deadline, f"{pod}'s server did not start"
                time.sleep(0.5)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_cluster_ip_round_robin_and_hairpin(lab: object) -> None:
    backend = IpvsBackend()
    changes = backend.sync(router(*SERVERS), full=True)
    assert any("added" in c for c in changes), changes
    seen = Counter(many("pinet-ivs-c1", VIP, 80, 30))
    assert seen == {"pinet-ivs-p1": 10, "pinet-ivs-p2": 10, "pinet-ivs-p3": 10}, seen
    own = Counter(many("pinet-ivs-p1", VIP, 80, 9))
    assert "FAILED" not in own and own["pinet-ivs-p1"] == 3, f"hairpin: {own}"
    listed = backend.read(router(*SERVERS))
    assert [(v.vip, v.port, sorted(s.ip for s in v.real_servers)) for v in listed] == [
        (VIP, 80, sorted(PODS[s] for s in SERVERS))
    ]


def test_client_ip_persistence(lab: object) -> None:
    backend = IpvsBackend()
    backend.sync(router(*SERVERS, persistence=60, port=81), full=True)
    for client in ("pinet-ivs-c1", "pinet-ivs-c2"):
        seen = Counter(many(client, VIP, 81, 12))
        assert len(seen) == 1 and "FAILED" not in seen, f"one client, one server: {seen}"
    sticky = router(*SERVERS, persistence=60, port=81)
    assert [v.persistence for v in backend.read(sticky) if v.port == 81] == [60], "read back from the kernel"
    again = IpvsBackend().sync(sticky, full=True)
    assert not [c for c in again if ":81/" in c], f"a restarted lb changes nothing: {again}"
    # The control: the same service without persistence spreads one client.
    backend.sync(router(*SERVERS, port=81), full=True)
    control = Counter(many("pinet-ivs-c1", VIP, 81, 12))
    assert len(control) >= 2 and "FAILED" not in control, f"without persistence it spreads: {control}\n{kernel()}"


def test_removed_server_drains_and_a_restart_changes_nothing(lab: object) -> None:
    echo = subprocess.Popen(["ip", "netns", "exec", "pinet-ivs-p3", sys.executable, "-c", ECHO, "8001", "x"])
    try:
        backend = IpvsBackend()
        backend.sync(router("pinet-ivs-p3", port=82, target=8001), full=True)
        deadline = time.monotonic() + 60
        talk = None
        # 45 s of chatter: the drained connection must outlive the checks
        # below, which take 20 s and more in the emulated VM. It counts as
        # connected once IPVS holds it (a Python process takes seconds to
        # start there: a fixed wait let the move below come first).
        while talk is None:
            attempt = subprocess.Popen(
                ["ip", "netns", "exec", "pinet-ivs-c1", sys.executable, "-c", CHATTER, VIP, "82", "45"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            while attempt.poll() is None and active_connections(PODS["pinet-ivs-p3"], 8001) == 0:
                assert time.monotonic() < deadline, "could not connect to the echo server"
                time.sleep(0.5)
            if attempt.poll() is None:
                talk = attempt
            assert time.monotonic() < deadline, "could not connect to the echo server"
        # p3 leaves: weight 0, its connection lives on; new ones go elsewhere.
        moved = router("pinet-ivs-p1", "pinet-ivs-p2", port=82, target=8000)
        changes = backend.sync(moved, full=False)
        assert any("draining" in c for c in changes), changes
        assert backend.draining(ROUTER)
        weights = {s.ip: s.weight for v in backend.read(moved) if v.port == 82 for s in v.real_servers}
        assert weights == {PODS["pinet-ivs-p3"]: 0, PODS["pinet-ivs-p1"]: 1, PODS["pinet-ivs-p2"]: 1}, weights
        assert set(many("pinet-ivs-c2", VIP, 82, 4)) == {"pinet-ivs-p1", "pinet-ivs-p2"}
        # A restarted lb (empty memory) converges without touching anything.
        again = IpvsBackend().sync(moved, full=True)
        assert not [c for c in again if ":82/" in c and "draining" not in c], f"{again}\n{kernel()}"
        out, err = talk.communicate(timeout=120)
        assert talk.returncode == 0, f"the drained connection broke: {err}"
        assert int(out.split()[1]) > 20, out
    finally:
        echo.kill()


async def test_auto_chooses_ipvs_from_inside_the_running_loop() -> None:
    """As the lb starts: inside its event loop (pyroute2's synchronous
    socket cannot run its own loop there; asking from that loop used to
    make auto pick nftables on every kernel)."""
    from services.lb.app import make_backend

    assert make_backend("auto").kind == "ipvs"
