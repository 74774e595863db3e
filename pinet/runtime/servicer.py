"""The edge of every servicer method: an ApiError becomes its status, etcd
down becomes UNAVAILABLE, anything else INTERNAL (logged with its traceback);
every call is counted and timed (pinet.runtime.metrics)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from pinet.etcd.errors import EtcdUnavailable
from pinet.runtime.errors import ApiError
from pinet.runtime.metrics import call_metrics

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def _status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ApiError):
        return exc.code, exc.message
    if isinstance(exc, EtcdUnavailable):
        return grpc.StatusCode.UNAVAILABLE, "the platform's store (etcd) is unavailable; retry"
    log.error("%s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}"


def _code_name(context: grpc.aio.ServicerContext[Any, Any], otherwise: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return otherwise if code is None else str(code)


class _Edge:
    """Around one call: counts and times it by how it ended, and turns an
    exception into the call's status."""

    __slots__ = ("context", "metrics", "name", "started")

    def __init__(self, servicer: object, name: str, context: grpc.aio.ServicerContext[Any, Any], timed: bool) -> None:
        self.context = context
        self.name = name
        self.metrics = call_metrics(type(servicer), name)
        self.started = time.perf_counter() if timed else None

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            self.metrics.finished("OK", self.started)
        elif isinstance(exc, grpc.aio.AbortError):
            self.metrics.finished(_code_name(self.context, "UNKNOWN"), self.started)
        elif isinstance(exc, Exception):
            status, message = _status_for(exc, self.name)
            self.metrics.finished(status.name, self.started)
            await self.context.abort(status, message)
        else:
            self.metrics.finished("CANCELLED", self.started)
        return False


def unary(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Servicer method decorator: ApiError -> its status; etcd down ->
    UNAVAILABLE; anything else -> INTERNAL (logged with its traceback).
    Counts and times the call (pinet.runtime.metrics)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        async with _Edge(self, name, context, timed=True):
            return await fn(self, request, context)
        raise AssertionError("unreachable: the edge aborts the call")

    return wrapper


def stream(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """The same for server-streaming methods (counted, not timed)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        async with _Edge(self, name, context, timed=False):
            async for item in fn(self, request, context):
                yield item

    return wrapper
