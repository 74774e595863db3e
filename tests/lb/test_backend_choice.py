"""`--backend auto` asks the kernel from inside the service's running
uvloop, as the lb does at start: on this machine's kernel (no ip_vs) it
picks nftables with one log line saying why, and leaves no failed task
behind (the IPVS VM's half is tests/lb/test_ipvs.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest
import uvloop

from services.lb.app import make_backend


def test_auto_falls_back_to_nftables_saying_why(caplog: pytest.LogCaptureFixture) -> None:
    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has ip_vs: tests/lb/test_ipvs.py covers the choice")
    problems: list[dict[str, Any]] = []

    async def start() -> str:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: problems.append(context))
        kind = make_backend("auto").kind
        await asyncio.sleep(0.1)
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        await asyncio.sleep(0)
        return kind

    with (
        caplog.at_level(logging.INFO, logger="services.lb.app"),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        kind = runner.run(start())
    assert kind == "nftables"
    lines = [r.getMessage() for r in caplog.records if r.name == "services.lb.app"]
    assert len(lines) == 1 and "no ip_vs module" in lines[0] and "using nftables" in lines[0], lines
    assert not problems, problems
