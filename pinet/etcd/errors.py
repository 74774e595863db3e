"""What an etcd call can fail with, as pinet's own exceptions: etcd gone
(EtcdUnavailable, which callers retry), history compacted (Compacted, which
informers relist after), anything else (EtcdError)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

import aetcd
import grpc

P = ParamSpec("P")
R = TypeVar("R")

_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


class EtcdError(Exception):
    """An etcd call failed for a reason other than availability."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached (restarting, partitioned or down)."""


class Compacted(EtcdError):
    """The requested revision is older than etcd's compacted history."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision}")
        self.compact_revision = compact_revision


def translate(exc: BaseException) -> BaseException:
    """The domain error for a failed etcd call (the exception itself when it
    is not one of gRPC's or aetcd's)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() in _UNAVAILABLE_CODES:
            return EtcdUnavailable(f"etcd unavailable: {exc.code().name}: {exc.details()}")
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (exc.details() or ""):
            return Compacted(0)
        return EtcdError(f"etcd: {exc.code().name}: {exc.details()}")
    if isinstance(exc, aetcd.exceptions.ConnectionFailedError | aetcd.exceptions.ConnectionTimeoutError):
        return EtcdUnavailable(str(exc))
    if isinstance(exc, aetcd.exceptions.ClientError):
        return EtcdError(str(exc))
    return exc


def etcd_call(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as exc:
            raise translate(exc) from exc

    return wrapper


def raise_if_channel_closed() -> None:
    """grpc.aio ends a stream whose channel is closed (a channel replaced by
    reopen()) with CancelledError, as if its task were cancelled. When the
    task is not being cancelled, that is a broken stream: EtcdUnavailable,
    which its owner resumes from."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        raise EtcdUnavailable("the etcd channel was closed (reopened with new TLS files); resume")


@contextlib.contextmanager
def stream_errors() -> Iterator[None]:
    """Around reading an etcd stream (a watch, a keep-alive): its gRPC
    errors as pinet's, and its end by a closed channel as EtcdUnavailable."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise translate(exc) from exc
    except asyncio.CancelledError:
        raise_if_channel_closed()
        raise
