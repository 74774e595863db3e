"""The local stack: starts everything, reports SERVING, stops cleanly."""

from __future__ import annotations

import os
from pathlib import Path

from pinet.devstack.hosts import netns_names
from tests.helpers.stack import new_stack, stack_ports


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def test_stacks_of_one_test_run_never_share_a_port(tmp_path: Path) -> None:
    # Offsets 2000 apart would have (one run's demo stack once failed so).
    assert stack_ports(10_000) & stack_ports(12_000)
    stacks = [new_stack(tmp_path) for _ in range(10)]
    seen: set[int] = set()
    for stack in stacks:
        ports = stack_ports(stack.offset)
        assert {7700 + stack.offset, 9700 + stack.offset, 10053 + stack.offset} <= ports
        assert not ports & seen, f"offset {stack.offset} shares ports with an earlier stack"
        seen |= ports


def test_stack_starts_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    stack = new_stack(tmp_path)
    try:
        stack.start()
        table = "".join(stack.banner)
        for name in ("etcd", "ipam", "network", "dns", "netagent-1", "netagent-2", "lb-1", "lb-2"):
            assert any(line.startswith(name + " ") and "SERVING" in line for line in stack.banner), (name, table)
        assert stack.api in table
        assert processes_mentioning(f"127.0.0.1:{stack.etcd_port}"), "children are running"
        hosts = [f"pinet-{stack.lab}-{suffix}" for suffix in ("h1", "h2", "inet", "underlay")]
        assert set(hosts) <= set(netns_names()), "the simulated hosts exist"
    finally:
        rest = stack.stop()
    assert stack.proc is not None and stack.proc.returncode == 0, rest
    assert "stopped" in rest
    assert processes_mentioning(f"127.0.0.1:{stack.etcd_port}") == [], "every child process is gone"
    assert not [n for n in netns_names() if n.startswith(f"pinet-{stack.lab}-")], "every namespace is gone"
    assert (tmp_path / "etcd").is_dir() and (tmp_path / "logs" / "ipam.log").is_file()
