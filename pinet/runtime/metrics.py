"""Prometheus metrics: an HTTP /metrics endpoint and gRPC call metrics.

Calls are counted by the servicer decorators (pinet.runtime.errors.unary/stream),
which every pinet handler already passes through, rather than by a server
interceptor: an interceptor adds a chain of coroutines to every call, and on
a loaded ipam one more coroutine layer per call measured about 14 µs of its
240 µs of CPU per call."""

from __future__ import annotations

import sys
import time

from prometheus_client import Counter, Histogram, start_http_server

GRPC_HANDLED = Counter(
    "pinet_grpc_server_handled_total",
    "gRPC calls completed, by method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "pinet_grpc_server_handling_seconds",
    "Time to answer a unary gRPC call.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def serve_metrics(address: str) -> int:
    """Start the /metrics endpoint on host:port (port 0 picks one); returns
    the bound port."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1")
    return int(server.server_port)


def _service_of(servicer_type: type) -> str:
    """The full name of the gRPC service a servicer class implements, found
    through its generated base class (FooServicer in x_pb2_grpc) and the
    descriptor of the matching x_pb2 module."""
    for base in servicer_type.__mro__:
        if not base.__module__.endswith("_pb2_grpc"):
            continue
        module = sys.modules.get(base.__module__.removesuffix("_grpc"))
        service = module.DESCRIPTOR.services_by_name.get(base.__name__.removesuffix("Servicer")) if module else None
        if service is not None:
            return str(service.full_name)
    return servicer_type.__name__


class CallMetrics:
    """The counters of one method of one servicer."""

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self.latency = GRPC_LATENCY.labels(service, method)
        self.ok = GRPC_HANDLED.labels(service, method, "OK")

    def finished(self, code: str, started: float | None = None) -> None:
        """A call ended with status code (started: perf_counter at its start,
        for unary calls, whose latency is recorded)."""
        if started is not None:
            self.latency.observe(time.perf_counter() - started)
        (self.ok if code == "OK" else GRPC_HANDLED.labels(self.service, self.method, code)).inc()


_CALLS: dict[tuple[type, str], CallMetrics] = {}


def call_metrics(servicer_type: type, method: str) -> CallMetrics:
    metrics = _CALLS.get((servicer_type, method))
    if metrics is None:
        metrics = _CALLS[servicer_type, method] = CallMetrics(_service_of(servicer_type), method)
    return metrics
