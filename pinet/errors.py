"""API errors: one exception type carrying a gRPC status code and a message a
person can act on, turned into a gRPC status at the edge of every servicer."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from pinet.etcd.client import EtcdUnavailable

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, message)


def failed_precondition(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def exhausted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def permission_denied(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message)


def out_of_range(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.OUT_OF_RANGE, message)


def aborted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, message)


def unauthenticated(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message)


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    if isinstance(exc, ApiError):
        await context.abort(exc.code, exc.message)
    if isinstance(exc, EtcdUnavailable):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the platform's store (etcd) is unavailable; retry")
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}")


def unary(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Servicer method decorator: ApiError -> its status; etcd down ->
    UNAVAILABLE; anything else -> INTERNAL (logged with its traceback)."""

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, fn.__name__)
            raise AssertionError("unreachable") from exc

    return wrapper


def stream(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """The same for server-streaming methods."""

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, fn.__name__)

    return wrapper
