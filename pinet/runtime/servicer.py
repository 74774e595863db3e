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

from pinet.etcd.client import EtcdUnavailable
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


def unary(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Servicer method decorator: ApiError -> its status; etcd down ->
    UNAVAILABLE; anything else -> INTERNAL (logged with its traceback).
    Counts and times the call (pinet.runtime.metrics)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        started = time.perf_counter()
        code = "OK"
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            code = _code_name(context, "UNKNOWN")
            raise
        except Exception as exc:
            status, message = _status_for(exc, name)
            code = status.name
            await context.abort(status, message)
            raise AssertionError("unreachable") from exc
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            call_metrics(type(self), name).finished(code, started)

    return wrapper


def stream(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """The same for server-streaming methods (counted, not timed)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        code = "OK"
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            code = _code_name(context, "UNKNOWN")
            raise
        except Exception as exc:
            status, message = _status_for(exc, name)
            code = status.name
            await context.abort(status, message)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            call_metrics(type(self), name).finished(code)

    return wrapper
