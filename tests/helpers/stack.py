"""Runs the local stack (`pinet stack`) for a test, on ports of its own."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pinet.devstack.etcd import free_port
from tests.helpers.procs import ROOT


@dataclass
class Stack:
    state: Path
    etcd_port: int
    offset: int
    lab: str = ""
    proc: subprocess.Popen[str] | None = None
    banner: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"127.0.0.1:{7700 + self.offset}"

    @property
    def etcd(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def start(self, timeout: float = 120) -> Stack:
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, ".venv/bin/pinet"), "stack", "--state-dir", str(self.state),
             "--etcd-port", str(self.etcd_port), "--port-offset", str(self.offset), "--lab", self.lab],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.banner.append(line)
            if "Press Ctrl-C" in line:
                return self
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError("the stack did not start:\n" + "".join(self.banner))

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rest, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        return rest or ""

    def pi(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PINET_API": self.api, "PINET_TOKEN_FILE": str(self.state / "token")}
        env.pop("PINET_TOKEN", None)
        out = subprocess.run(
            [os.path.join(ROOT, ".venv/bin/pi"), *args], input=stdin, capture_output=True, text=True,
            env=env, timeout=60, check=False,
        )  # fmt: skip
        if check:
            assert out.returncode == 0, f"pi {' '.join(args)} failed: {out.stderr}"
        return out


def new_stack(tmp: Path) -> Stack:
    # Service ports run from 7700 to 9722 plus the offset: all of them stay
    # below the kernel's ephemeral range (32768 and up), where any client
    # socket of the machine might hold one.
    return Stack(tmp, free_port(), random.randrange(10_000, 22_000, 100), f"s{random.randrange(16**4):04x}")
