"""One audit line per mutating API call: who (tenant, admin or not), which
call, on what object, with what result. Logged to the `pinet.audit` logger
(JSON lines with the service's other logs), whether the call succeeded or
was refused."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from pinet.runtime.errors import ApiError

log = logging.getLogger("pinet.audit")

MUTATING_PREFIXES = ("Create", "Update", "Delete", "Scale", "Allocate", "Release", "Issue", "Revoke")
S = TypeVar("S")
Caller = Callable[[grpc.aio.ServicerContext[Any, Any]], Any]


def is_mutating(method: str) -> bool:
    return method.startswith(MUTATING_PREFIXES)


_NAMING_FIELDS = ("name", "address", "tenant", "token_id")


def object_of(request: Message) -> str:
    """What a request acts on: 'namespace/name' of an object (in the request
    or named by it), else its address, tenant or token id."""
    if "metadata" in request.DESCRIPTOR.fields_by_name:
        meta = request.metadata  # type: ignore[attr-defined]
        return f"{meta.namespace or 'default'}/{meta.name}"
    for _, value in request.ListFields():
        if isinstance(value, Message) and "metadata" in value.DESCRIPTOR.fields_by_name:
            return object_of(value)
    fields = dict((f.name, v) for f, v in request.ListFields())
    if "name" in fields and "namespace" in request.DESCRIPTOR.fields_by_name:
        return f"{fields.get('namespace') or 'default'}/{fields['name']}"
    return next((str(fields[f]) for f in _NAMING_FIELDS if f in fields), "")


def audited(method: Callable[..., Awaitable[Any]], name: str, caller: Caller) -> Callable[..., Awaitable[Any]]:
    """Wrap a servicer's (already @unary) method with its audit line."""

    @functools.wraps(method)
    async def wrapper(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            who = caller(context)
            tenant, admin = who.tenant, who.admin
        except ApiError:
            tenant, admin = "-", False
        result = "OK"
        try:
            return await method(request, context)
        except grpc.aio.AbortError:
            code = context.code()
            result = code.name if isinstance(code, grpc.StatusCode) else str(code)
            raise
        except BaseException:
            result = "CANCELLED"
            raise
        finally:
            log.info(
                "audit tenant=%s admin=%s call=%s object=%s result=%s",
                tenant, str(admin).lower(), name, object_of(request) or "-", result,
            )  # fmt: skip

    return wrapper


def audit_servicer(servicer: S, caller: Caller) -> S:
    """Every mutating method of servicer, audited (in place)."""
    for name in dir(type(servicer)):
        if is_mutating(name) and callable(getattr(servicer, name)):
            setattr(servicer, name, audited(getattr(servicer, name), name, caller))
    return servicer
