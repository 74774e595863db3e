"""`pinet stack --demo` (`scripts/up --demo`): plays the Pi docs'
walkthrough on the running stack, printing each command and its output.

    pi create fip; pi create -f service.yml; pi create -f nginx.yml
    (a web server in the pod: pi exec nginx -- pinet web nginx)
    curl http://FIP:8080 from pinet-internet
    pi get svc; pi describe svc test-loadbalancer; pi get ep test-loadbalancer
    pi delete pod nginx; pi delete service test-loadbalancer; pi delete fip FIP
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class DemoError(Exception):
    pass


@dataclass
class Walkthrough:
    api: str
    token_file: Path
    work: Path  # where the filled-in service.yml goes
    internet: str  # the namespace playing the internet
    say: bool = True

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PINET_API": self.api, "PINET_TOKEN_FILE": str(self.token_file)}
        env.pop("PINET_TOKEN", None)
        ca = self.token_file.parent / "pki" / "ca.crt"
        if ca.is_file():
            env["PINET_CA"] = str(ca)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    async def run(self, *argv: str, shown: str = "", check: bool = True) -> str:
        if self.say:
            print(f"$ {shown or shlex.join(argv)}", flush=True)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self._env(), cwd=self.work
        )
        out, _ = await proc.communicate()
        text = out.decode()
        if self.say and text:
            print(text.rstrip(), flush=True)
        if check and proc.returncode != 0:
            raise DemoError(f"{shlex.join(argv)} failed: {text.strip()}")
        return text

    async def pi(self, *args: str, check: bool = True) -> str:
        return await self.run(str(Path(sys.executable).parent / "pi"), *args, shown="pi " + shlex.join(args),
                              check=check)  # fmt: skip

    async def wait_ready(self, pod: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            quiet = Walkthrough(self.api, self.token_file, self.work, self.internet, say=False)
            out = await quiet.pi("get", "pod", pod, check=False)
            if re.search(r"\bRunning\b", out) and "1/1" in out:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(f"pod {pod} did not become ready: {out.strip()}")
            await asyncio.sleep(0.5)

    async def fetch(self, url: str, timeout: float = 30) -> str:
        """curl url from the internet namespace until it answers."""
        deadline = asyncio.get_running_loop().time() + timeout
        quiet = Walkthrough(self.api, self.token_file, self.work, self.internet, say=False)
        argv = ("ip", "netns", "exec", self.internet, "curl", "-sS", "--max-time", "2", url)
        while True:
            out = await quiet.run(*argv, check=False)
            if "<html" in out:
                return await self.run(*argv, shown=f"curl {url}    # from {self.internet}")
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(f"{url} did not answer from {self.internet}: {out.strip()}")
            await asyncio.sleep(0.5)

    async def play(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        created = await self.pi("create", "fip")
        found = re.search(r"fip/(\S+)", created)
        if not found:
            raise DemoError(f"pi create fip printed no address: {created!r}")
        fip = found.group(1)
        manifest = (EXAMPLES / "service.yml").read_text()
        (self.work / "service.yml").write_text(re.sub(r"loadBalancerIP: \S+", f"loadBalancerIP: {fip}", manifest))
        (self.work / "nginx.yml").write_text((EXAMPLES / "nginx.yml").read_text())
        await self.pi("create", "-f", "service.yml")
        await self.pi("create", "-f", "nginx.yml")
        await self.wait_ready("nginx")
        await self.pi("exec", "nginx", "--", "pinet", "web", "nginx")
        await self.fetch(f"http://{fip}:8080")
        await self.pi("get", "svc")
        await self.pi("describe", "svc", "test-loadbalancer")
        await self.pi("get", "ep", "test-loadbalancer")
        await self.pi("delete", "pod", "nginx")
        await self.pi("delete", "service", "test-loadbalancer")
        await self.pi("delete", "fip", fip)
