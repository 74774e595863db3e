"""The Pi docs' walkthrough through `pi` against the local stack."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pinet.etcd.keyspace import ENDPOINTS, FIP_BINDINGS, IPAM_ADDRESSES, IPAM_HANDLES, NODE_PORTS, PODS, SERVICES
from tests.helpers.procs import ROOT
from tests.helpers.stack import Stack, new_stack

EXAMPLES = Path(ROOT) / "examples"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await asyncio.to_thread(new_stack(tmp_path).start)
    yield stack
    await asyncio.to_thread(stack.stop)


@pytest.mark.slow
async def test_walkthrough_through_pi(stack: Stack, tmp_path: Path) -> None:
    etcd = await stack.etcd_client().connect()
    try:
        out = await asyncio.to_thread(stack.pi, "create", "fip")
        match = re.fullmatch(r"fip/(\d+\.\d+\.\d+\.\d+)\n", out.stdout)
        assert match, out.stdout
        fip = match[1]
        service = (EXAMPLES / "service.yml").read_text().replace("203.0.113.7", fip)
        (tmp_path / "service.yml").write_text(service)
        out = await asyncio.to_thread(stack.pi, "create", "-f", str(tmp_path / "service.yml"))
        assert out.stdout == "service/test-loadbalancer\n"
        out = await asyncio.to_thread(stack.pi, "create", "-f", str(EXAMPLES / "nginx.yml"))
        assert out.stdout == "pod/nginx\n"
        pod_ip = (await asyncio.to_thread(stack.pi, "get", "pods", "-o", "wide")).stdout.split("\n")[1].split()[5]

        deadline = time.monotonic() + 15
        while True:
            ep = (await asyncio.to_thread(stack.pi, "get", "ep", "test-loadbalancer")).stdout
            if f"{pod_ip}:80" in ep:
                break
            assert time.monotonic() < deadline, ep
            await asyncio.sleep(0.2)
        assert ep.splitlines()[0].split() == ["NAME", "ENDPOINTS", "AGE"]

        svc = (await asyncio.to_thread(stack.pi, "get", "svc")).stdout.splitlines()
        assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
        row = svc[1].split()
        assert row[0] == "test-loadbalancer" and row[1] == "LoadBalancer" and row[3] == fip
        assert re.fullmatch(r"8080:3\d{4}/TCP", row[4])
        described = (await asyncio.to_thread(stack.pi, "describe", "svc", "test-loadbalancer")).stdout
        for field in ("Name:", "Namespace:", "Labels:", "Selector:", "Type:", "IP:", "Port:", "Endpoints:",
                      "Session Affinity:"):  # fmt: skip
            assert field in described, described
        assert "app=nginx" in described and f"{pod_ip}:80" in described and "LoadBalancer" in described
        fips = (await asyncio.to_thread(stack.pi, "get", "fip")).stdout
        assert fip in fips and "default/test-loadbalancer" in fips and "ALLOCATED" in fips

        # pi exec runs inside the pod: its address and its resolv.conf.
        inside = (await asyncio.to_thread(stack.pi, "exec", "nginx", "--", "ip", "-o", "addr", "show", "eth0")).stdout
        assert f"inet {pod_ip}/16" in inside
        resolv = (await asyncio.to_thread(stack.pi, "exec", "nginx", "--", "cat", "/etc/resolv.conf")).stdout
        assert "nameserver 10.244.0.2" in resolv and "ndots:5" in resolv

        # Deleting in the docs' order leaves nothing of theirs in etcd.
        assert (await asyncio.to_thread(stack.pi, "delete", "pod", "nginx")).stdout == "pod/nginx deleted\n"
        await asyncio.to_thread(stack.pi, "delete", "service", "test-loadbalancer")
        await asyncio.to_thread(stack.pi, "delete", "fip", fip)
        for prefix in (PODS.prefix, SERVICES.prefix, ENDPOINTS.prefix, NODE_PORTS.prefix, FIP_BINDINGS.prefix,
                       IPAM_HANDLES.prefix):  # fmt: skip
            assert await etcd.count_prefix(prefix) == 0, prefix
        assert await etcd.count_prefix(IPAM_ADDRESSES.prefix) == 0

        # Errors are one line and a non-zero exit.
        for args in (("get", "pod", "nginx"), ("delete", "fip", fip), ("create", "-f", "/nonexistent.yml"),
                     ("get", "widgets")):  # fmt: skip
            bad = await asyncio.to_thread(stack.pi, *args, check=False)
            assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr, bad.stderr
    finally:
        await etcd.close()
