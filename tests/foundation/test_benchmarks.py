"""The benchmark scripts whose figures go into the README and the closing
notes still run: each, at a size too small to be a figure. bench.dns is left
out: it installs dnsperf and unbound from Debian first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.procs import ROOT


def run_bench(module: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_bench_ipam_prints_every_row_and_the_cpu_per_operation() -> None:
    out = run_bench("bench.ipam", "--allocations", "400", "--rounds", "2")
    lines = out.splitlines()
    cpu_at = next(i for i, line in enumerate(lines) if line.startswith("CPU per operation"))
    tls_at = next(i for i, line in enumerate(lines) if line.startswith("TLS (mTLS"))
    for clients in ("1", "16", "64"):
        rates = [line for line in lines[:cpu_at] if line.split()[:1] == [clients]]
        cpu = [line for line in lines[cpu_at:tls_at] if line.split()[:1] == [clients]]
        tls = [line for line in lines[tls_at:] if line.split()[:1] == [clients]]
        assert len(rates) == 1 and rates[0].count("/s") == 3, out
        assert len(cpu) == 1 and "ipam" in cpu[0] and "etcd" in cpu[0] and "server" in cpu[0], out
        assert len(tls) == 1 and tls[0].count("/s") == 2, out


@pytest.mark.slow
def test_bench_etcd_prints_the_reference() -> None:
    out = run_bench("bench.etcd", "--writes", "500")
    assert "informer catch-up over a backlog" in out, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "args", "last_figure"),
    [
        ("bench.endpoints", ("--services", "20", "--samples", "10"), "Endpoints change in etcd: p50"),
        pytest.param("bench.lb", ("--sizes", "10"), "targets at 10 services", marks=pytest.mark.netns),
        pytest.param("bench.netagent", ("--pods", "3"), "with 3 pods wired", marks=pytest.mark.netns),
        pytest.param("bench.e2e", ("--services", "3"), "from calling CreateService", marks=pytest.mark.netns),
        pytest.param(
            "bench.isolation",
            ("--rounds", "2", "--connects", "20", "--seconds", "0.2", "--attaches", "2"),
            "attach p99 (ms)",
            marks=pytest.mark.netns,
        ),
    ],
)
def test_bench_runs(module: str, args: tuple[str, ...], last_figure: str) -> None:
    assert last_figure in run_bench(module, *args)
