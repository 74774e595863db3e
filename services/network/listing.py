"""Paged, filtered listing of API objects straight from etcd."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from pinet.api.common.v1 import meta_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import Kind
from pinet.objects.store import with_version
from pinet.runtime.errors import invalid
from pinet.runtime.paging import page_size
from services.network.deps import DEFAULT_PAGE, MAX_PAGE

M = TypeVar("M", bound=Message)


def _decode_token(token: str, prefix: bytes) -> tuple[bytes, int]:
    if not token:
        return b"", 0
    try:
        raw = base64.urlsafe_b64decode(token.encode())
        revision, _, key = raw.partition(b":")
        if not key.startswith(prefix):
            raise ValueError
        return key, int(revision)
    except ValueError:
        raise invalid("options.page_token: not a token from a previous page of this list") from None


def _encode_token(key: bytes, revision: int) -> str:
    return base64.urlsafe_b64encode(str(revision).encode() + b":" + key).decode()


async def list_objects(
    etcd: Etcd, kind: Kind[M], prefix: bytes, options: meta_pb2.ListOptions, keep: Callable[[M], bool]
) -> tuple[list[M], meta_pb2.ListMeta]:
    """One page of objects under prefix that keep() accepts. Every page of
    one listing reads the same revision, so paging is consistent."""
    limit = page_size(options.page_size, DEFAULT_PAGE, MAX_PAGE, "options.page_size")
    start, revision = _decode_token(options.page_token, prefix)
    out: list[M] = []
    while True:
        kvs, more, rev = await etcd.list_page(prefix, start, limit=max(limit, 100), revision=revision)
        revision = revision or rev
        for kv in kvs:
            obj = with_version(kind, kv)
            if not keep(obj):
                continue
            out.append(obj)
            if len(out) == limit:
                has_more = more or kv is not kvs[-1]
                token = _encode_token(kv.key + b"\0", revision) if has_more else ""
                return out, meta_pb2.ListMeta(next_page_token=token, resource_version=revision)
        if not more or not kvs:
            return out, meta_pb2.ListMeta(resource_version=revision)
        start = kvs[-1].key + b"\0"
