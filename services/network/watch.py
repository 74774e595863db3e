"""Watch streams for the API: the state at a resource version, then every
change after it, as seen through a filter (tenant, namespace, labels)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from google.protobuf.message import Message

from pinet.api.common.v1 import meta_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.errors import Compacted
from pinet.etcd.keyspace import Kind
from pinet.objects.store import with_version
from pinet.runtime.errors import out_of_range

M = TypeVar("M", bound=Message)
R = TypeVar("R")

ADDED = meta_pb2.WATCH_EVENT_TYPE_ADDED
MODIFIED = meta_pb2.WATCH_EVENT_TYPE_MODIFIED
DELETED = meta_pb2.WATCH_EVENT_TYPE_DELETED
BOOKMARK = meta_pb2.WATCH_EVENT_TYPE_BOOKMARK


async def stream(
    etcd: Etcd,
    kind: Kind[M],
    prefix: bytes,
    resource_version: int,
    keep: Callable[[M], bool],
    make: Callable[[meta_pb2.WatchEventType.ValueType, M | None, int], R],
) -> AsyncIterator[R]:
    """Yield make(event_type, object, resource_version) for everything under
    prefix that keep() accepts. An object that stops matching keep() is
    reported DELETED, one that starts matching ADDED, as Kubernetes does."""
    if resource_version <= 0:
        kvs, revision = await etcd.list_prefix(prefix)
        for kv in kvs:
            obj = with_version(kind, kv)
            if keep(obj):
                yield make(ADDED, obj, kv.mod_revision)
        yield make(BOOKMARK, None, revision)
        start = revision + 1
    else:
        start = resource_version + 1
    try:
        async for batch in etcd.watch(prefix, start, progress_notify=True, prev_kv=True):
            if not batch.events:
                yield make(BOOKMARK, None, batch.revision)
                continue
            for ev in batch.events:
                before = with_version(kind, ev.prev) if ev.prev is not None else None
                was = before is not None and keep(before)
                if ev.deleted:
                    if was and before is not None:
                        yield make(DELETED, before, ev.kv.mod_revision)
                    continue
                obj = with_version(kind, ev.kv)
                now_visible = keep(obj)
                if now_visible:
                    yield make(MODIFIED if was else ADDED, obj, ev.kv.mod_revision)
                elif was:
                    yield make(DELETED, obj, ev.kv.mod_revision)
    except Compacted as exc:
        raise out_of_range(
            f"resource_version {resource_version} is older than the store's history "
            f"(compacted at {exc.compact_revision}); list again and watch from the list's resource_version"
        ) from None
