"""The local stack: starts everything, reports SERVING, stops cleanly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from pinet.devstack.etcd import free_port
from tests.helpers.procs import ROOT


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_stack_starts_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    etcd_port = free_port()
    offset = random.randrange(20_000, 40_000, 100)
    proc = subprocess.Popen(
        [
            os.path.join(ROOT, ".venv/bin/pinet"),
            "stack",
            "--state-dir",
            str(tmp_path),
            "--etcd-port",
            str(etcd_port),
            "--port-offset",
            str(offset),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        table = "".join(lines)
        assert "Press Ctrl-C" in table, table
        for name in ("etcd", "ipam", "network", "dns", "netagent-1", "netagent-2", "lb-1", "lb-2"):
            assert any(line.startswith(name + " ") and "SERVING" in line for line in lines), (name, table)
        assert f"127.0.0.1:{7700 + offset}" in table
        assert processes_mentioning(f"127.0.0.1:{etcd_port}"), "children are running"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    assert processes_mentioning(f"127.0.0.1:{etcd_port}") == [], "every child process is gone"
    assert (tmp_path / "etcd").is_dir() and (tmp_path / "logs" / "ipam.log").is_file()
