"""Reading and writing API objects in etcd: resource versions filled in on
read, conditional updates with retry on conflict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import Kind
from pinet.etcd.values import KeyValue

M = TypeVar("M", bound=Message)


def with_version(kind: Kind[M], kv: KeyValue) -> M:
    """Decode kv and set its resource version (metadata.resource_version or
    resource_version, whichever the message has)."""
    obj = kind.decode(kv.value)
    set_version(obj, kv.mod_revision)
    return obj


def set_version(obj: Message, revision: int) -> None:
    meta: Any = getattr(obj, "metadata", None)
    if meta is not None and hasattr(meta, "resource_version"):
        meta.resource_version = revision
    elif hasattr(obj, "resource_version"):
        obj.resource_version = revision  # type: ignore[attr-defined]


def for_storage(obj: M) -> M:
    """A copy without the resource version, which etcd itself keeps."""
    copy = type(obj)()
    copy.CopyFrom(obj)
    set_version(copy, 0)
    return copy


async def get(etcd: Etcd, kind: Kind[M], key: bytes) -> tuple[M, KeyValue] | None:
    kv = await etcd.get(key)
    return (with_version(kind, kv), kv) if kv else None


class Conflict(Exception):
    """The object changed too often while being updated."""


async def update(etcd: Etcd, kind: Kind[M], key: bytes, mutate: Callable[[M], bool], attempts: int = 20) -> M | None:
    """Read-modify-write with a compare on mod_revision, retried on conflict.
    mutate changes the object in place and returns False to leave it alone.
    Returns the stored object, or None when the key does not exist."""
    for _ in range(attempts):
        kv = await etcd.get(key)
        if kv is None:
            return None
        obj = with_version(kind, kv)
        if not mutate(obj):
            return obj
        revision = await etcd.update(key, kind.encode(for_storage(obj)), kv.mod_revision)
        if revision is not None:
            set_version(obj, revision)
            return obj
    raise Conflict(f"{key.decode()} kept changing; gave up after {attempts} attempts")
