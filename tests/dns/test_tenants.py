"""Per-tenant DNS inside the tenant routers: each tenant's pods ask their own
router's DNS address, through their own resolv.conf, and see only their own
names."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import pytest

from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.devstack.etcd import EtcdServer
from tests.dns.conftest import create_objects
from tests.helpers.cloud import Cloud
from tests.helpers.procs import ServiceProcess

RESOLVE = "import socket, sys\ntry:\n print(socket.gethostbyname(sys.argv[1]))\nexcept OSError as e:\n print('ERR', e)"


@pytest.fixture(scope="module")
async def dns_proc(etcd_server: EtcdServer, cloud: Cloud) -> AsyncIterator[ServiceProcess]:
    proc = await ServiceProcess(
        "dns", etcd_server.endpoint, ["--hosts", ",".join(cloud.hosts.hosts), "--dns-listen", ""]
    ).start()
    yield proc
    await proc.terminate()


def resolve(cloud: Cloud, pod: objects_pb2.Pod, name: str) -> str:
    return str(cloud.in_pod(pod, sys.executable, "-c", RESOLVE, name).stdout.strip())


async def test_each_tenant_sees_its_own_names(cloud: Cloud, dns_proc: ServiceProcess) -> None:
    a, b = await cloud.tenant("dns-a"), await cloud.tenant("dns-b")
    svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n"
    a_ips = await create_objects(a, svc)
    b_ips = await create_objects(b, svc)
    a_ips.update(await create_objects(a, svc.replace("name: web", "name: only-a")))
    a_pod = await cloud.run_pod(a, "client", cloud.hosts.host(1))
    b_pod = await cloud.run_pod(b, "client", cloud.hosts.host(2))
    deadline = time.monotonic() + 10
    while True:  # the dns process opens its listener once it sees the router
        got = await asyncio.to_thread(resolve, cloud, a_pod, "web")
        if not got.startswith("ERR"):
            break
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.2)
    assert got == a_ips["web"]
    assert await asyncio.to_thread(resolve, cloud, b_pod, "web") == b_ips["web"]
    assert await asyncio.to_thread(resolve, cloud, a_pod, "web.default.svc.cluster.local") == a_ips["web"]
    assert await asyncio.to_thread(resolve, cloud, a_pod, "only-a") == a_ips["only-a"]
    assert (await asyncio.to_thread(resolve, cloud, b_pod, "only-a")).startswith("ERR"), "A's name is not B's"
    for t in (a, b):
        await t.call("DeletePod", network_pb2.ObjectRef(name="client"))
        await t.call("DeleteService", network_pb2.ObjectRef(name="web"))
    await a.call("DeleteService", network_pb2.ObjectRef(name="only-a"))
