"""`pinet stack`: etcd and every service as supervised child processes.

It makes the cluster's PKI on first start (.pinet/pki: the CA, a certificate
per service identity), starts etcd with TLS, client certificates and a role
per identity, then each service with its own certificate, waits until every
one reports SERVING over gRPC health checking, prints where each listens,
restarts a service that dies, and on Ctrl-C or SIGTERM stops them all
(services first, etcd last).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinet.devstack.demo import DemoError, Walkthrough
from pinet.devstack.etcd import EtcdServer
from pinet.devstack.hosts import SimulatedHosts
from pinet.hostnet.command import KernelError
from pinet.pki import authority
from pinet.pki.identity import Identity, cluster_identities
from pinet.runtime.config import EnvArgumentParser
from pinet.runtime.probe import wait_serving
from pinet.runtime.tls import Tls, TlsFiles

log = logging.getLogger("pinet.stack")


@dataclass
class ServiceSpec:
    name: str
    module: str
    listen: str
    metrics: str
    extra: list[str] = field(default_factory=list)
    node: str = ""

    @property
    def identity(self) -> Identity:
        return Identity.for_service(self.module, self.node)

    def command(self, etcd: str, pki: Path | None = None) -> list[str]:
        tls = ["--tls-dir", str(pki)] if pki is not None else ["--insecure"]
        return [
            sys.executable,
            "-m",
            f"services.{self.module}",
            "--etcd",
            etcd,
            "--listen",
            self.listen,
            "--metrics",
            self.metrics,
            *tls,
            *self.extra,
        ]


def cni_socket(node: str) -> str:
    """Each simulated host's agent has its own CNI socket."""
    return f"/run/pinet/{node}.sock"


def default_services(lab: SimulatedHosts, host: str = "127.0.0.1", offset: int = 0) -> list[ServiceSpec]:
    def at(port: int) -> str:
        return f"{host}:{port + offset}"

    specs = [
        ServiceSpec("ipam", "ipam", at(7701), at(9701)),
        ServiceSpec("network", "network", at(7700), at(9700), ["--ipam", at(7701)]),
        ServiceSpec(
            "dns",
            "dns",
            at(7702),
            at(9702),
            ["--hosts", ",".join(lab.host(n) for n in range(1, lab.count + 1)), "--dns-listen", at(10053)],
        ),
    ]
    for n in range(1, lab.count + 1):
        node = lab.host(n)
        specs += [
            ServiceSpec(
                f"netagent-{n}", "netagent", at(7710 + n), at(9710 + n),
                ["--node-name", node, "--host-netns", node, "--underlay-ip", lab.underlay_ip(n),
                 "--cni-socket", cni_socket(node)],
                node,
            ),
            ServiceSpec(
                f"lb-{n}", "lb", at(7720 + n), at(9720 + n), ["--node-name", node, "--host-netns", node], node
            ),
        ]  # fmt: skip
    return specs


class Supervised:
    """One child service, restarted with backoff when it dies."""

    def __init__(self, spec: ServiceSpec, etcd: str, log_dir: Path, pki: Path | None) -> None:
        self.spec = spec
        self.etcd = etcd
        self.pki = pki
        self.log_path = log_dir / f"{spec.name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.restarts = 0

    async def start(self) -> None:
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - a local append, instant
            self.proc = await asyncio.create_subprocess_exec(
                *self.spec.command(self.etcd, self.pki),
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                env=dict(os.environ, PINET_LOG_FORMAT="json"),
                start_new_session=True,
            )

    async def supervise(self) -> None:
        backoff = 0.5
        while not self.stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self.stopping:
                return
            self.restarts += 1
            log.warning(
                "%s exited with %s; restarting in %.1fs (log: %s)",
                self.spec.name,
                code,
                backoff,
                self.log_path,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)
            if not self.stopping:
                await self.start()

    async def stop(self, grace: float = 8.0) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            log.warning("%s did not stop in %.0fs; killing it", self.spec.name, grace)
            self.proc.kill()
            await self.proc.wait()


async def run_stack(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    log_dir = state / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    lab = SimulatedHosts(args.lab, 2)
    nodes = [lab.host(n) for n in range(1, lab.count + 1)]
    pki: Path | None = None
    if args.insecure:
        print("--insecure: plaintext everywhere, no identities, no authorization (for benchmarks)", flush=True)
    else:
        pki = state / "pki"
        issued = await asyncio.to_thread(authority.ensure, pki, cluster_identities(nodes))
        if issued:
            print(f"issued certificates in {pki}: {', '.join(str(i) for i in issued)}", flush=True)
    etcd = EtcdServer(
        state / "etcd", args.etcd_port, args.etcd_port + 1, log_dir / "etcd.log", name="pinet-dev", pki=pki
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    print(f"creating the simulated hosts: {', '.join(lab.host(n) for n in (1, 2))} on {lab.underlay}, "
          f"with {lab.internet} outside", flush=True)  # fmt: skip
    await asyncio.to_thread(lab.setup)
    print(f"starting etcd on {etcd.endpoint} (data in {etcd.data_dir})", flush=True)
    try:
        await asyncio.to_thread(etcd.start)
        await etcd.grant_roles(nodes)
    except BaseException:
        await asyncio.to_thread(etcd.stop)
        await asyncio.to_thread(lab.teardown)
        raise
    specs = default_services(lab, offset=args.port_offset)
    for spec in specs:
        if spec.module == "network":
            spec.extra += ["--bootstrap-dir", str(state)]
    children = [Supervised(spec, etcd.endpoint, log_dir, pki) for spec in specs]
    monitor = Identity("monitor")
    probe_tls = Tls(TlsFiles.in_directory(pki, monitor), monitor) if pki is not None else None
    watchers: list[asyncio.Task[None]] = []
    try:
        for child in children:
            await child.start()
        # Supervise from the start: a service that exits while its
        # dependencies come up is restarted like any other.
        watchers = [asyncio.create_task(c.supervise()) for c in children]
        waiting = asyncio.gather(
            *(wait_serving(c.spec.listen, args.start_timeout, tls=probe_tls, peer=c.spec.identity) for c in children)
        )
        stopped = asyncio.create_task(stop.wait())
        first: set[asyncio.Future[Any]] = {waiting, stopped}
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            waiting.cancel()
            with contextlib.suppress(BaseException):
                await waiting
            return 130
        waiting.result()
        print_table(etcd, children, log_dir, pki)
        status = 0
        if args.expose:
            try:
                routes = await asyncio.to_thread(lab.expose)
            except KernelError as exc:
                print(f"pinet stack: --expose failed: {exc}", file=sys.stderr, flush=True)
                return 1
            print(f"--expose: added the route {', '.join(routes)} in this machine's namespace "
                  f"(removed on exit): curl http://FLOATING-IP:PORT works from your shell", flush=True)  # fmt: skip
        if args.demo:
            status = await play_demo(children, state, lab)
        if args.exit_when_ready:
            return status
        await stopped
        return status
    except TimeoutError as exc:
        print(f"pinet stack: {exc}; see the logs in {log_dir}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping the pinet stack ...", flush=True)
        for child in reversed(children):
            await child.stop()
        for w in watchers:
            w.cancel()
        await asyncio.to_thread(etcd.stop)
        await asyncio.to_thread(lab.teardown)
        print("stopped", flush=True)


async def play_demo(children: list[Supervised], state: Path, lab: SimulatedHosts) -> int:
    api = next(c.spec.listen for c in children if c.spec.name == "network")
    print("\nThe Pi walkthrough, step by step:\n", flush=True)
    walkthrough = Walkthrough(api, state / "token", state / "demo", lab.internet)
    try:
        await walkthrough.play()
    except DemoError as exc:
        print(f"the walkthrough stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\nThe walkthrough is done.", flush=True)
    return 0


def print_table(etcd: EtcdServer, children: list[Supervised], log_dir: Path, pki: Path | None) -> None:
    rows = [("etcd", etcd.endpoint, "-", "SERVING")]
    rows += [(c.spec.name, c.spec.listen, f"http://{c.spec.metrics}/metrics", "SERVING") for c in children]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("SERVICE", "GRPC", "METRICS", "STATUS")
    width = [max(w, len(h)) for w, h in zip(width, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(col.ljust(w) for col, w in zip(row, width, strict=True)).rstrip(), flush=True)
    api = next(c.spec.listen for c in children if c.spec.name == "network")
    dns = next(c.spec for c in children if c.spec.name == "dns")
    local_dns = dns.extra[dns.extra.index("--dns-listen") + 1]
    print(f"\nlogs: {log_dir}", flush=True)
    if pki is not None:
        print(f"TLS everywhere: the cluster CA is {pki / 'ca.crt'} (pi and other clients verify the API with it)")
    print(f"DNS for tenant default: {local_dns} (dig @{local_dns.replace(':', ' -p ')} NAME.default.svc.cluster.local)")
    print(
        f"`pi` talks to {api} with the token in {log_dir.parent / 'token'}. Press Ctrl-C to stop everything.",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = EnvArgumentParser(prog="pinet stack", description="Run the whole pinet stack locally.")
    parser.add_argument("--state-dir", default=".pinet", help="where etcd data and logs live")
    parser.add_argument("--etcd-port", type=int, default=12379, help="etcd client port (peer port is +1)")
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to every service port (to run a second stack)"
    )
    parser.add_argument(
        "--lab", default="", help="name the simulated hosts pinet-LAB-h1... instead of pinet-host-1... (tests)"
    )
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for SERVING")
    parser.add_argument(
        "--exit-when-ready", action="store_true", help="stop again once everything is serving (a smoke test)"
    )
    parser.add_argument("--demo", action="store_true", help="play the Pi walkthrough once the stack is up")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext, no certificates, no authorization (benchmarks only)"
    )
    parser.add_argument(
        "--expose", action="store_true",
        help="add one route in this machine's namespace, for the floating-IP pool towards the stack, "
        "so that a floating IP answers from your own shell (removed on exit)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.state_dir = Path(args.state_dir).resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stack %(levelname)s %(message)s")
    return asyncio.run(run_stack(args))
