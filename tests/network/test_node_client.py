"""A client in another language: Node.js with @grpc/grpc-js calls the API
over TLS, trusting the cluster CA and sending its token
(examples/node-client/whoami.js, its dependencies from its lock file)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pinet.api.network.v1 import network_pb2
from tests.helpers import tls
from tests.helpers.platform import Platform
from tests.helpers.procs import ROOT
from tests.helpers.services import service

EXAMPLE = Path(ROOT) / "examples" / "node-client"


def node_ready() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed (scripts/test installs them from Debian's nodejs and npm)")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, capture_output=True, timeout=300
        )


def whoami(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", "whoami.js"], cwd=EXAMPLE, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


async def test_a_grpc_js_client_calls_the_api_with_the_ca_and_a_token(platform: Platform) -> None:
    await asyncio.to_thread(node_ready)
    t = await platform.tenant()
    await t.call("CreateService", service("from-node", {"app": "x"}, [(80, 80)]))
    env = {"PINET_API": platform.network.address, "PINET_CA": str(tls.pki() / "ca.crt"), "PINET_TOKEN": t.token}
    out = await asyncio.to_thread(whoami, env)
    assert out.returncode == 0, out.stderr
    me = json.loads(out.stdout.splitlines()[0])
    assert me["tenant"] == t.name and me["admin"] is False and me["network"]["cidr"] == "10.244.0.0/16"
    assert "from-node" in out.stdout.splitlines()[1]

    bad_token = await asyncio.to_thread(whoami, {**env, "PINET_TOKEN": "pinet_not-a-token"})
    assert bad_token.returncode == 1 and "UNAUTHENTICATED" in bad_token.stderr
    await t.call("DeleteService", network_pb2.ObjectRef(name="from-node"))
