"""A little cloud for the agent tests: three simulated hosts with their
agents, ipam and network, and two tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pinet.devstack.etcd import EtcdServer
from tests.helpers.cloud import Cloud, running_cloud

__all__ = ["Cloud", "cloud"]


@pytest.fixture(scope="module")
async def cloud(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    async with running_cloud(etcd_server.endpoint, tmp_path_factory.mktemp("cloud")) as c:
        yield c
