"""The whole platform on the local stack (`pinet stack`, two simulated
hosts): the Pi walkthrough with nginx through a floating IP, a pod reaching
the service by name, a second tenant with the same names and addresses, and
deleting everything in the docs' order leaving nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pinet.etcd.keyspace import (
    DEPLOYMENTS,
    ENDPOINTS,
    FIP_BINDINGS,
    IPAM_ADDRESSES,
    IPAM_HANDLES,
    NODE_PORTS,
    PODS,
    SERVICES,
)
from pinet.hostnet.netns import list_netns
from tests.helpers.procs import ROOT
from tests.helpers.stack import Stack, new_stack
from tests.helpers.wait import eventually

EXAMPLES = Path(ROOT) / "examples"
PINET = os.path.join(ROOT, ".venv/bin/pinet")
CLUSTER_IP = "10.244.250.80"  # the same in both tenants
PAGE_POD = re.compile(r"Served by pod <b>([^<]+)</b>")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    stack = await asyncio.to_thread(new_stack(tmp_path_factory.mktemp("e2e")).start)
    yield stack
    await asyncio.to_thread(stack.stop)


class Tenant:
    """`pi` as one tenant of the stack."""

    def __init__(self, stack: Stack, name: str, token_file: Path) -> None:
        self.stack, self.name, self.token_file = stack, name, token_file

    def pi(self, *args: str, check: bool = True) -> str:
        env = {**os.environ, "PINET_API": self.stack.api, "PINET_TOKEN_FILE": str(self.token_file),
               "PINET_CA": str(self.stack.pki / "ca.crt")}  # fmt: skip
        env.pop("PINET_TOKEN", None)
        out = subprocess.run(
            [os.path.join(ROOT, ".venv/bin/pi"), *args], capture_output=True, text=True, env=env, timeout=60,
            check=False,
        )  # fmt: skip
        if check:
            assert out.returncode == 0, f"[{self.name}] pi {' '.join(args)}: {out.stderr}"
        return out.stdout

    async def api(self, *args: str, check: bool = True) -> str:
        return await asyncio.to_thread(self.pi, *args, check=check)

    async def pods(self) -> dict[str, tuple[str, str, str]]:
        """name -> (status, ip, node) of the tenant's pods."""
        rows = (await self.api("get", "pods", "-o", "wide")).splitlines()[1:]
        return {r.split()[0]: (r.split()[2], r.split()[5], r.split()[6]) for r in rows if r.strip()}


def curl_from_internet(stack: Stack, url: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", f"pinet-{stack.lab}-inet", "curl", "-sS", "--max-time", "2", url],
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    return out.stdout


async def curl_by_name(t: Tenant, pod: str) -> str:
    return await t.api(
        "exec", pod, "--", "curl", "-sS", "--max-time", "3",
        "http://test-loadbalancer.default.svc.cluster.local:8080", check=False,
    )  # fmt: skip


def served_by(page: str) -> str:
    found = PAGE_POD.search(page)
    return found.group(1) if found else ""


async def walkthrough(t: Tenant, work: Path) -> tuple[str, list[str]]:
    """The docs' steps with two nginx replicas; returns the FIP and the pods."""
    created = await t.api("create", "fip")
    fip = re.fullmatch(r"fip/(\S+)\n", created)
    assert fip, created
    service = (EXAMPLES / "service.yml").read_text().replace("203.0.113.7", fip[1])
    service = service.replace("  type: LoadBalancer\n", f"  type: LoadBalancer\n  clusterIP: {CLUSTER_IP}\n")
    work.mkdir(parents=True, exist_ok=True)
    (work / "service.yml").write_text(service)
    assert await t.api("create", "-f", str(work / "service.yml")) == "service/test-loadbalancer\n"
    await t.api("create", "-f", str(EXAMPLES / "deployment.yml"))

    async def two_running() -> bool:
        pods = await t.pods()
        return len(pods) == 2 and all(p[0] == "Running" for p in pods.values())

    await eventually(two_running, f"{t.name}'s two nginx replicas run", timeout=30)
    pods = await t.pods()
    assert len({p[2] for p in pods.values()}) == 2, f"the replicas are on two hosts: {pods}"
    for name in pods:
        assert "serving" in await t.api("exec", name, "--", PINET, "web", name)
    return fip[1], sorted(pods)


@pytest.mark.slow
async def test_two_tenants_walk_through_and_leave_nothing(stack: Stack, tmp_path: Path) -> None:
    admin = Tenant(stack, "admin", stack.state / "admin-token")
    (tmp_path / "second-token").write_text(await admin.api("admin", "token", "second"))
    tenants = [Tenant(stack, "default", stack.state / "token"), Tenant(stack, "second", tmp_path / "second-token")]
    setups = {t.name: await walkthrough(t, tmp_path / t.name) for t in tenants}

    for t in tenants:
        fip, pods = setups[t.name]
        url = f"http://{fip}:8080"
        await eventually(lambda url=url: served_by(curl_from_internet(stack, url)), f"{url} answers")  # type: ignore[misc]
        seen = [served_by(await asyncio.to_thread(curl_from_internet, stack, url)) for _ in range(24)]
        assert set(seen) == set(pods), f"both replicas serve {t.name}'s floating IP: {seen}"

        # From a pod, by name, through the pod's own resolv.conf. Up to
        # three tries: one run of the whole suite saw a lookup time out once
        # (a lost UDP answer is retried by glibc after 5 s, past curl's 3 s),
        # and the next query answered; the closing note of #19 says so.
        pages = [await curl_by_name(t, pods[0])]
        while served_by(pages[-1]) not in pods and len(pages) < 3:
            pages.append(await curl_by_name(t, pods[0]))
        assert served_by(pages[-1]) in pods, f"{t.name}: {pages}"
        resolved = await t.api("exec", pods[0], "--", "getent", "hosts", "test-loadbalancer")
        assert resolved.split()[0] == CLUSTER_IP, resolved

    # An ExternalName pointing at another Service of the zone: a pod's own
    # resolver (glibc) gets the CNAME and its target's address in one answer.
    first, second = tenants
    (tmp_path / "alias.yml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web-alias\nspec:\n  type: ExternalName\n"
        "  externalName: test-loadbalancer.default.svc.cluster.local\n"
    )
    await first.api("create", "-f", str(tmp_path / "alias.yml"))
    in_pod = setups[first.name][1][0]

    async def alias_resolves() -> bool:
        out = await first.api("exec", in_pod, "--", "getent", "hosts", "web-alias", check=False)
        return out.split()[:1] == [CLUSTER_IP]

    await eventually(alias_resolves, "getent hosts web-alias in a pod gives the target service's address")
    page = await first.api(
        "exec", in_pod, "--", "curl", "-sS", "--max-time", "3", "http://web-alias.default.svc.cluster.local:8080"
    )  # fmt: skip
    assert served_by(page) in setups[first.name][1], page
    await first.api("delete", "service", "web-alias")

    # Neither tenant reaches the other's pods, services or names.
    await second.api("expose", "deployment", "nginx", "--port", "80", "--name", "only-second")
    for src, other in ((first, second), (second, first)):
        theirs = setups[other.name][1]
        mine = setups[src.name][1]
        for name, (_, ip, _) in (await other.pods()).items():
            page = await src.api("exec", mine[0], "--", "curl", "-s", "--max-time", "2", f"http://{ip}/",
                                 check=False)  # fmt: skip
            assert served_by(page) not in theirs, f"{src.name} reached {other.name}'s pod {name}"
        page = await src.api("exec", mine[0], "--", "curl", "-s", "--max-time", "2", f"http://{CLUSTER_IP}:8080/",
                             check=False)  # fmt: skip
        assert served_by(page) in mine, f"{src.name}'s cluster IP is its own: {page}"
    lookup = await first.api("exec", setups["default"][1][0], "--", "getent", "hosts", "only-second", check=False)
    assert lookup.strip() == "", f"the first tenant resolves the second's name: {lookup}"
    await second.api("delete", "service", "only-second")

    # Deleting in the docs' order: the workload, the service, the floating IP.
    for t in tenants:
        await t.api("delete", "deployment", "nginx")
        await t.api("delete", "service", "test-loadbalancer")
        await t.api("delete", "fip", setups[t.name][0])
    etcd = await stack.etcd_client().connect()
    try:
        for kind in (PODS, DEPLOYMENTS, SERVICES, ENDPOINTS, NODE_PORTS, FIP_BINDINGS, IPAM_HANDLES, IPAM_ADDRESSES):

            async def empty(prefix: bytes = kind.prefix) -> bool:
                return await etcd.count_prefix(prefix) == 0

            await eventually(empty, f"nothing under {kind.prefix!r} in etcd", timeout=20)
    finally:
        await etcd.close()
    hosts = [f"pinet-{stack.lab}-h{n}" for n in (1, 2)]

    def host_clean() -> str:
        """What pinet still holds on the hosts ("" when nothing)."""
        left = [n for n in list_netns() if any(n.startswith(h + "-") for h in hosts)]
        for host in hosts:
            links = json.loads(subprocess.run(["ip", "-n", host, "-j", "link"], capture_output=True,
                                              text=True, check=True).stdout)  # fmt: skip
            left += [f"{host}: link {ln['ifname']}" for ln in links if ln["ifname"].startswith(("pr", "pvx"))]
            tables = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "tables"], capture_output=True,
                                    text=True, check=True).stdout  # fmt: skip
            left += [f"{host}: {line}" for line in tables.splitlines() if "pinet" in line]
            routes = subprocess.run(["ip", "-n", host, "route", "show", "proto", "114"], capture_output=True,
                                    text=True, check=True).stdout  # fmt: skip
            left += [f"{host}: route {r}" for r in routes.splitlines()]
            proxies = subprocess.run(["ip", "-n", host, "neigh", "show", "proxy"], capture_output=True,
                                     text=True, check=True).stdout  # fmt: skip
            left += [f"{host}: proxy {p}" for p in proxies.splitlines()]
        return "\n".join(left)

    async def nothing_left() -> bool:
        return not await asyncio.to_thread(host_clean)

    await eventually(
        nothing_left, lambda: f"the hosts hold nothing of the walkthrough; still there:\n{host_clean()}", timeout=30
    )

    def no_web_server() -> bool:
        # `pinet web` notices its namespace gone within a second, then stops nginx.
        return not subprocess.run(["pgrep", "-f", "pinet web"], capture_output=True, check=False).stdout

    await eventually(no_web_server, "the pods' web servers stop with their namespaces", timeout=10)


@pytest.mark.slow
async def test_a_tenant_fences_its_web_pods_with_pi(stack: Stack, tmp_path: Path) -> None:
    """examples/networkpolicy.yml through `pi`: the internet still reaches the
    replicas through their floating IP, the tenant's other pods do not; pi
    describes the policy with the pods it selects, prints it as YAML,
    applies a change and deletes it; a bad manifest is one line and exit 1."""
    admin = Tenant(stack, "admin", stack.state / "admin-token")
    (tmp_path / "token").write_text(await admin.api("admin", "token", "fenced"))
    t = Tenant(stack, "fenced", tmp_path / "token")
    fip, pods = await walkthrough(t, tmp_path / "work")
    url = f"http://{fip}:8080"
    ips = {name: ip for name, (_, ip, _) in (await t.pods()).items()}

    async def pod_to_pod() -> str:
        return served_by(await t.api("exec", pods[0], "--", "curl", "-s", "--max-time", "2", f"http://{ips[pods[1]]}/",
                                     check=False))  # fmt: skip

    await eventually(lambda: served_by(curl_from_internet(stack, url)), f"{url} answers")
    assert await pod_to_pod() == pods[1]
    assert await t.api("create", "-f", str(EXAMPLES / "networkpolicy.yml")) == "networkpolicy/web-from-frontends\n"
    listed = await t.api("get", "netpol")
    assert "web-from-frontends" in listed and "app=nginx" in listed and "Ingress" in listed, listed
    described = await t.api("describe", "netpol", "web-from-frontends")
    assert all(name in described for name in pods), described

    async def fenced() -> bool:
        return await pod_to_pod() == ""

    await eventually(fenced, "the other replica no longer reaches nginx directly")
    seen = {served_by(await asyncio.to_thread(curl_from_internet, stack, url)) for _ in range(12)}
    assert seen == set(pods), f"the internet still reaches both replicas: {seen}"
    text = await t.api("get", "netpol", "web-from-frontends", "-o", "yaml")
    assert "ipBlock" in text and "10.244.0.0/16" in text, text
    (tmp_path / "changed.yml").write_text(text.replace("role: frontend", "app: nginx"))
    assert "configured" in await t.api("apply", "-f", str(tmp_path / "changed.yml"))

    async def open_again() -> bool:
        return await pod_to_pod() == pods[1]

    await eventually(open_again, "the applied change lets the replicas talk")
    (tmp_path / "bad.yml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\n"
        "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 70000}]\n"
    )
    bad = subprocess.run([os.path.join(ROOT, ".venv/bin/pi"), "create", "-f", str(tmp_path / "bad.yml")],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={**os.environ, "PINET_API": stack.api, "PINET_TOKEN_FILE": str(tmp_path / "token"),
                              "PINET_CA": str(stack.pki / "ca.crt")})  # fmt: skip
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "spec.ingress[0].ports[0].port" in bad.stderr, bad.stderr
    assert "bad" not in await t.api("get", "netpol")
    await t.api("delete", "netpol", "web-from-frontends")
    assert "web-from-frontends" not in await t.api("get", "netpol")
    await t.api("delete", "deployment", "nginx")
    await t.api("delete", "service", "test-loadbalancer")
    await t.api("delete", "fip", fip)


@pytest.mark.slow
async def test_scripts_up_demo_plays_the_walkthrough(tmp_path: Path) -> None:
    stack = new_stack(tmp_path)
    out = await asyncio.to_thread(
        subprocess.run,
        [PINET, "stack", "--state-dir", str(stack.state), "--etcd-port", str(stack.etcd_port),
         "--port-offset", str(stack.offset), "--lab", stack.lab, "--demo", "--exit-when-ready"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    steps = [line.split()[1:3] for line in out.stdout.splitlines() if line.startswith("$ ")]
    assert steps == [
        ["pi", "create"], ["pi", "create"], ["pi", "create"], ["pi", "exec"], ["curl", steps[4][1]],
        ["pi", "get"], ["pi", "describe"], ["pi", "get"], ["pi", "delete"], ["pi", "delete"], ["pi", "delete"],
    ], steps  # fmt: skip
    assert steps[4][1].startswith("http://203.0.113.") and steps[4][1].endswith(":8080")
    assert "Served by pod <b>nginx</b>" in out.stdout
