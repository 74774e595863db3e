"""Prometheus metrics: an HTTP /metrics endpoint and gRPC call metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
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


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every call by status code and times unary calls."""

    def __init__(self) -> None:
        # One wrapped handler per method, built on its first call: wrapping
        # per call would cost every call an allocation and a lookup.
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        wrapped = self._wrapped.get(handler_call_details.method)
        if wrapped is None:
            handler: Any = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._wrapped[handler_call_details.method] = self._wrap(handler_call_details.method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler: Any) -> Any:
        _, _, full = full_method.partition("/")
        service, _, method = full.partition("/")
        latency = GRPC_LATENCY.labels(service, method)
        ok = GRPC_HANDLED.labels(service, method, "OK")
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                code = "OK"
                try:
                    return await inner(request, context)
                except BaseException:
                    code = _code_of(context) if context.code() is not None else "UNKNOWN"
                    raise
                finally:
                    if code == "OK":
                        code = _code_of(context)
                    latency.observe(time.perf_counter() - start)
                    (ok if code == "OK" else GRPC_HANDLED.labels(service, method, code)).inc()

            return grpc.unary_unary_rpc_method_handler(
                unary,  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                code = "OK"
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException:
                    code = _code_of(context) if context.code() is not None else "CANCELLED"
                    raise
                finally:
                    GRPC_HANDLED.labels(service, method, code).inc()

            return grpc.unary_stream_rpc_method_handler(
                stream,  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
