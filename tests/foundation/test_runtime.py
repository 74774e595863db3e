"""Every service runs on the shared runtime: health, reflection, metrics,
configuration and graceful shutdown, checked on real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
import uuid

import pytest

from pinet.devstack.etcd import EtcdServer, free_port
from pinet.devstack.hosts import SimulatedHosts
from pinet.runtime.config import EnvArgumentParser, add_common_arguments
from pinet.runtime.probe import check, list_services
from tests.helpers import tls
from tests.helpers.procs import ROOT, ServiceProcess

API = {
    "ipam": ["pinet.ipam.v1.IpamService"],
    "network": ["pinet.network.v1.NetworkService", "pinet.network.v1.AdminService"],
    "netagent": ["pinet.netagent.v1.AgentService"],
    "lb": ["pinet.lb.v1.LoadBalancerService"],
    "dns": ["pinet.dns.v1.DnsService"],
}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("service", sorted(API))
async def test_service_health_reflection_metrics_and_sigterm(etcd_server: EtcdServer, service: str) -> None:
    metrics_port = free_port()
    args = ["--metrics", f"127.0.0.1:{metrics_port}"]
    lab = None
    if service in ("netagent", "lb"):
        # Host agents work on a host namespace of their own, never the root one.
        lab = await asyncio.to_thread(SimulatedHosts(uuid.uuid4().hex[:5], 1).setup)
        args += ["--node-name", lab.host(1), "--host-netns", lab.host(1)]
        if service == "netagent":
            args += ["--underlay-ip", lab.underlay_ip(1)]
    proc = await ServiceProcess(service, etcd_server.endpoint, args).start()
    over_tls = {"tls": tls.tls(tls.MONITOR), "peer": proc.identity}
    try:
        assert await check(proc.address) == "UNREACHABLE", "no plaintext"
        assert await check(proc.address, **over_tls) == "SERVING"  # type: ignore[arg-type]
        listed = await list_services(proc.address, **over_tls)  # type: ignore[arg-type]
        for name in [*API[service], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]:
            assert name in listed, f"{name} not listed by reflection: {listed}"
            if not name.startswith("grpc."):
                assert await check(proc.address, name, **over_tls) == "SERVING"  # type: ignore[arg-type]
        assert await check(proc.address, "no.such.Service", **over_tls) == "SERVICE_UNKNOWN"  # type: ignore[arg-type]
        body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
        assert "pinet_grpc_server_handled_total" in body
        assert 'method="Check"' in body, "gRPC calls are counted"
    finally:
        code = await proc.terminate()
        if lab is not None:
            await asyncio.to_thread(lab.teardown)
    assert code == 0, f"SIGTERM is a clean exit, got {code}: {proc.stderr[-2000:]}"
    assert "shutting down" in proc.stderr and "stopped" in proc.stderr


def test_pinet_health_command(etcd_server: EtcdServer) -> None:
    out = subprocess.run(
        [os.path.join(ROOT, ".venv/bin/pinet"), "health", f"127.0.0.1:{free_port()}", "--dir", str(tls.pki())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1 and "UNREACHABLE" in out.stdout


def test_flags_beat_environment_which_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> dict[str, object]:
        parser = EnvArgumentParser()
        add_common_arguments(parser, "127.0.0.1:7701")
        parser.add_argument("--pool-cidr", default="203.0.113.0/24")
        return vars(parser.parse_args(argv))

    assert parse()["listen"] == "127.0.0.1:7701"
    monkeypatch.setenv("PINET_LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("PINET_POOL_CIDR", "198.51.100.0/24")
    assert parse()["listen"] == "127.0.0.1:9999"
    assert parse()["pool_cidr"] == "198.51.100.0/24"
    assert parse("--listen", "127.0.0.1:1")["listen"] == "127.0.0.1:1"


def test_generated_protobuf_code_is_current() -> None:
    out = subprocess.run(
        [os.path.join(ROOT, "scripts/gen-protos"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PINET_PYTHON": os.path.join(ROOT, ".venv/bin/python")},
    )
    assert out.returncode == 0, out.stdout + out.stderr
