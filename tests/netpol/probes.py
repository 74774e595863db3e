"""The reachability matrix of the NetworkPolicy tests, in the style of the
upstream Kubernetes e2e suite: in every pod (and on the simulated
internet) one process that serves TCP and UDP 80 and 81, answering with its
name, and runs probes it is sent on stdin (one JSON list per line; the
results come back as one JSON list), all at once, so a matrix of denied
connections costs one timeout, not one per cell."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROBE_TIMEOUT = 1.5
PORTS = (("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81))

AGENT = r"""
import asyncio, json, socket, sys
NAME, TIMEOUT = sys.argv[1], float(sys.argv[2])

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport): self.transport = transport
    def datagram_received(self, data, addr): self.transport.sendto(NAME.encode(), addr)

async def answer(reader, writer):
    writer.write(NAME.encode()); await writer.drain(); writer.close()

async def tcp(ip, port):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), TIMEOUT)
    data = await asyncio.wait_for(reader.read(100), TIMEOUT); writer.close(); return data.decode()

async def udp(ip, port):
    loop = asyncio.get_running_loop(); got = loop.create_future()
    class Ask(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done(): got.set_result(data.decode())
    transport, _ = await loop.create_datagram_endpoint(Ask, remote_addr=(ip, port))
    try:
        for _ in range(3):  # a lost datagram is not a policy
            transport.sendto(b"?")
            try: return await asyncio.wait_for(asyncio.shield(got), TIMEOUT / 3)
            except asyncio.TimeoutError: pass
        raise TimeoutError
    finally: transport.close()

async def probe(proto, ip, port):
    try: return await (tcp if proto == "tcp" else udp)(ip, port)
    except Exception: return ""

async def main():
    loop = asyncio.get_running_loop()
    for port in (80, 81):
        await asyncio.start_server(answer, "0.0.0.0", port)
        await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", port))
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        probes = json.loads(line)
        results = await asyncio.gather(*(probe(*p) for p in probes))
        print(json.dumps(results), flush=True)

asyncio.run(main())
"""


@dataclass
class Prober:
    name: str
    ip: str
    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, netns: str, name: str, ip: str) -> Prober:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, sys.executable, "-c", AGENT, name, str(PROBE_TIMEOUT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"ready", f"prober {name} did not start: {line!r}"
        return cls(name, ip, proc)

    async def run(self, probes: Sequence[tuple[str, str, int]]) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(list(probes)) + "\n").encode())
        await self.proc.stdin.drain()
        return list(json.loads(await asyncio.wait_for(self.proc.stdout.readline(), PROBE_TIMEOUT * 4 + 10)))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


Cell = tuple[str, str, str, int]  # source, destination, protocol, port
Expect = Callable[[str, str, str, int], bool]


async def matrix(sources: Sequence[Prober], targets: dict[str, str], ports: Sequence[tuple[str, int]] = PORTS
                 ) -> dict[Cell, bool]:  # fmt: skip
    """Every source to every target (name -> address), but itself: True
    where the target answered with its name."""

    async def one(src: Prober) -> dict[Cell, bool]:
        cells = [(name, ip, proto, port) for name, ip in targets.items() if name != src.name for proto, port in ports]
        results = await src.run([(proto, ip, port) for _, ip, proto, port in cells])
        return {
            (src.name, name, proto, port): got == name
            for (name, _, proto, port), got in zip(cells, results, strict=True)
        }

    out: dict[Cell, bool] = {}
    for part in await asyncio.gather(*(one(s) for s in sources)):
        out.update(part)
    return out


def render(got: dict[Cell, bool], want: dict[Cell, bool]) -> str:
    """The matrix as upstream prints it: a row per source, a column per
    target, per port "." allowed, "X" denied, and a "*" after a wrong one."""
    sources = sorted({c[0] for c in got})
    targets = sorted({c[1] for c in got})
    ports = sorted({(c[2], c[3]) for c in got})
    lines = []
    for proto, port in ports:
        lines.append(f"{proto}/{port}   " + " ".join(f"{t:>8}" for t in targets))
        for s in sources:
            row = []
            for t in targets:
                cell = (s, t, proto, port)
                if cell not in got:
                    row.append(f"{'-':>8}")
                    continue
                mark = "." if got[cell] else "X"
                row.append(f"{mark + ('*' if got[cell] != want[cell] else ''):>8}")
            lines.append(f"{s:>8} " + " ".join(row))
        lines.append("")
    wrong = sum(1 for c in got if got[c] != want[c])
    return f"{wrong} of {len(got)} cells wrong (. allowed, X denied, * not as expected)\n" + "\n".join(lines)
