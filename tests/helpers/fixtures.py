"""Fixtures shared across test packages (a pytest plugin loaded by
tests/conftest.py): the control plane, fake agents, and the simulated
clouds of the agent and lb tests. Each is per module."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pinet.devstack.etcd import EtcdServer
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.cloud import Cloud, running_cloud
from tests.helpers.platform import Platform
from tests.helpers.procs import ServiceProcess


@pytest.fixture(scope="module")
async def platform(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    state = tmp_path_factory.mktemp("network")
    ipam = await ServiceProcess(
        "ipam", etcd_server.endpoint, ["--floating-ranges", "203.0.113.0/24", "--gc-interval", "0"]
    ).start()
    network = await ServiceProcess(
        "network", etcd_server.endpoint, ["--ipam", ipam.address, "--bootstrap-dir", str(state)]
    ).start()
    channel = network.channel()
    admin_token = (Path(state) / "admin-token").read_text().strip()
    yield Platform(ipam, network, admin_token, channel)
    await channel.close(None)
    await network.terminate()
    await ipam.terminate()


@pytest.fixture(scope="module")
async def agents(etcd_server: EtcdServer, platform: Platform) -> AsyncIterator[FakeWiringAgents]:
    etcd = await etcd_server.client().connect()
    suffix = uuid.uuid4().hex[:6]
    agents = await FakeWiringAgents(etcd, {f"node-a-{suffix}": "192.0.2.11", f"node-b-{suffix}": "192.0.2.12"}).start()
    yield agents
    await agents.stop()
    await etcd.close()


@pytest.fixture(scope="module")
async def cloud(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    async with running_cloud(etcd_server.endpoint, tmp_path_factory.mktemp("cloud")) as c:
        yield c


@pytest.fixture(scope="module")
async def lbcloud(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    async with running_cloud(
        etcd_server.endpoint, tmp_path_factory.mktemp("lb"), floating="203.0.113.0/24",
        lb_args=["--backend", "nftables"],
    ) as c:  # fmt: skip
        yield c
