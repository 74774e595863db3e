"""Shared fixtures: a real etcd server per session, and fresh ones on demand."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from pinet.devstack.etcd import EtcdServer
from pinet.devstack.hosts import netns_names, sh
from pinet.etcd.client import Etcd
from tests.helpers import tls

# Fixtures more than one test package uses.
pytest_plugins = ["tests.helpers.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def no_leftover_namespaces() -> Iterator[None]:
    """Safety net: whatever namespace named pinet* a test made and did not
    remove is removed at the end of the session (and the session fails)."""
    before = set(netns_names())
    yield
    left = [n for n in netns_names() if n.startswith("pinet") and n not in before]
    for name in left:
        sh("ip", "netns", "del", name, check=False)
    assert not left, f"tests left these namespaces behind: {left}"


@pytest.fixture(scope="session", autouse=True)
def test_pki() -> Iterator[None]:
    """The run's CA and certificates (tests/helpers/tls.py), removed after."""
    tls.pki()
    yield
    tls.remove()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """etcd as the platform runs it: TLS, client certificates, a role per
    service identity (granted as each service starts)."""
    server = tls.start_etcd(EtcdServer(tmp_path_factory.mktemp("etcd") / "data", pki=tls.pki()))
    yield server
    server.stop()


@pytest.fixture
def make_etcd_server(tmp_path: Path) -> Iterator[Callable[[], EtcdServer]]:
    """Start an etcd of the test's own, for tests that restart or compact it."""
    servers: list[EtcdServer] = []

    def make() -> EtcdServer:
        server = tls.start_etcd(EtcdServer(tmp_path / f"etcd{len(servers)}", pki=tls.pki()))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(kill=True)


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Etcd]:
    client: Etcd = await etcd_server.client().connect()
    yield client
    await client.close()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix of the test's own inside the shared etcd."""
    return f"/pinet-test/{uuid.uuid4().hex[:12]}/".encode()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ipvs need a kernel with ip_vs: scripts/test runs them in
    the IPVS VM (which sets PINET_IN_IPVS_VM) and reports them there; outside
    it they are deselected, never passed."""
    if os.environ.get("PINET_IN_IPVS_VM"):
        return
    kept = [i for i in items if i.get_closest_marker("ipvs") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("ipvs") is not None])
        items[:] = kept
