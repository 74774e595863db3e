"""The service runtime: one way to run every pinet service.

A service is an `App`: it registers its gRPC servicers, starts its
background work, and stops. The runtime gives it a grpc.aio server with
health checking and reflection, an etcd connection, structured logs,
Prometheus metrics and graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from pinet.etcd.client import Etcd
from pinet.pki.identity import Identity
from pinet.runtime.authz import Authorizer
from pinet.runtime.config import EnvArgumentParser, add_common_arguments
from pinet.runtime.logs import setup_logging
from pinet.runtime.metrics import serve_metrics
from pinet.runtime.servicer import stream, unary
from pinet.runtime.tls import Tls, TlsConfigError, files_from_args, follow_files

log = logging.getLogger(__name__)


class App(Protocol):
    """What a service implements."""

    #: Short name: "ipam", "network", ...
    name: str
    #: Default gRPC listen address.
    default_listen: str
    #: Whether callers must present a certificate of the cluster CA in the
    #: TLS handshake (every service but the user-facing API).
    client_certificates: bool

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the service's own flags."""

    def setup(self, rt: Runtime) -> None:
        """Register servicers with rt.add_servicer (before the server starts)."""

    async def start(self, rt: Runtime) -> None:
        """Start background work; return once the service can answer."""

    async def stop(self) -> None:
        """Stop background work and release what start took."""


class BaseApp:
    """Defaults for the optional parts of App."""

    name = ""
    default_listen = ""
    client_certificates = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def setup(self, rt: Runtime) -> None:
        pass

    async def start(self, rt: Runtime) -> None:
        pass

    async def stop(self) -> None:
        pass


class CountedHealthServicer(HealthServicer):  # type: ignore[misc]
    """grpc's health service, counted in the call metrics like pinet's own."""

    Check = unary(HealthServicer.Check)
    Watch = stream(HealthServicer.Watch)


class Runtime:
    def __init__(
        self, args: argparse.Namespace, server: grpc.aio.Server, etcd: Etcd, identity: Identity, tls: Tls | None
    ) -> None:
        self.args = args
        self.server = server
        self.etcd = etcd
        #: Who this service is; tls is None with --insecure.
        self.identity = identity
        self.tls = tls
        #: Long-lived clients to reopen when the TLS files change (etcd's
        #: first; an app adds its own in setup).
        self.reopeners: list[Callable[[], Awaitable[None]]] = [etcd.reopen]
        self.health = CountedHealthServicer()
        self.service_names: list[str] = []
        self.bound_port = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def add_servicer(self, full_name: str, adder: Any, servicer: Any) -> None:
        """adder is the generated add_XServicer_to_server function."""
        adder(servicer, self.server)
        self.service_names.append(full_name)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run background work for the life of the service. If it fails, the
        service shuts down (a supervisor restarts it) instead of limping on."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None and not self.failed.done():
                log.error("background task %s failed: %r", name, exc, exc_info=exc)
                self.failed.set_result(exc)

        task.add_done_callback(done)
        return task

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def build_parser(app: App) -> argparse.ArgumentParser:
    parser = EnvArgumentParser(prog=f"pinet {app.name}", description=f"Run the pinet {app.name} service.")
    add_common_arguments(parser, app.default_listen)
    app.add_arguments(parser)
    return parser


def load_tls(app: App, args: argparse.Namespace) -> tuple[Identity, Tls | None]:
    identity = Identity.for_service(app.name, args.node_name)
    files = files_from_args(args, identity)
    if files is None:
        log.warning(
            "%s runs with --insecure: plaintext gRPC, no caller identities, no authorization; "
            "anyone who can reach its port can call it",
            app.name,
        )
        return identity, None
    return identity, Tls(files, identity)


async def serve(app: App, args: argparse.Namespace) -> int:
    try:
        identity, tls = load_tls(app, args)
        etcd = await Etcd(args.etcd, tls=tls).connect()
    except (TlsConfigError, ValueError, OSError) as exc:
        log.error("%s cannot start: %s", app.name, exc)
        return 2
    server = grpc.aio.server(
        interceptors=[Authorizer(args.node_name)] if tls is not None else [],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.optimization_target", "throughput"),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
    )
    rt = Runtime(args, server, etcd, identity, tls)
    health_pb2_grpc.add_HealthServicer_to_server(rt.health, server)
    app.setup(rt)
    reflection.enable_server_reflection(
        [
            *rt.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if tls is None:
        rt.bound_port = server.add_insecure_port(args.listen)
    else:
        rt.bound_port = server.add_secure_port(args.listen, tls.server_credentials(app.client_certificates))
    if rt.bound_port == 0:
        log.error("cannot listen on %s", args.listen)
        return 2
    if args.metrics:
        metrics_port = serve_metrics(args.metrics)
        log.info("metrics on http://%s:%d/metrics", args.metrics.rpartition(":")[0], metrics_port)
    await rt.set_serving(False)
    await server.start()
    if tls is not None:
        rt.spawn(follow_files(tls, rt.reopeners, args.tls_poll), "tls-files")
    log.info("%s listening on %s (port %d)", app.name, args.listen, rt.bound_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    exit_code = 0
    try:
        starting = asyncio.create_task(app.start(rt), name=f"{app.name}:start")
        stopping = asyncio.create_task(stop.wait())
        first: set[asyncio.Future[Any]] = {starting, stopping, rt.failed}
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            await rt.set_serving(True)
            log.info("%s is serving", app.name)
            then: set[asyncio.Future[Any]] = {stopping, rt.failed}
            await asyncio.wait(then, return_when=asyncio.FIRST_COMPLETED)
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        stopping.cancel()
        if rt.failed.done():
            exit_code = 1
    except Exception:
        log.exception("%s failed to start", app.name)
        exit_code = 1
    finally:
        log.info("%s shutting down", app.name)
        await rt.health.enter_graceful_shutdown()
        await server.stop(args.shutdown_grace)
        with contextlib.suppress(Exception):
            await app.stop()
        await rt.cancel_tasks()
        await etcd.close()
        log.info("%s stopped", app.name)
    return exit_code


def run(app: App, argv: Sequence[str] | None = None) -> int:
    args = build_parser(app).parse_args(argv)
    setup_logging(app.name, args.log_level, args.log_format)
    loop_factory = None
    try:
        import uvloop

        # Only the service's own loop: installing uvloop as the policy would
        # also hand it to libraries that run loops of their own (pyroute2's
        # netlink sockets do not work on uvloop).
        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(app, args))
    except KeyboardInterrupt:
        return 130


def main_for(app: App) -> None:
    sys.exit(run(app))
