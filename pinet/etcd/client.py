"""A small asyncio etcd v3 client for pinet.

aetcd provides the generated etcd v3 stubs; pinet owns the channel (so that
it can speak TLS with a client certificate, which etcd maps to a user by its
common name) and calls the stubs directly for the four things aetcd's
higher-level methods do not offer: paged ranges pinned to one revision,
transactions comparing on create/mod revision with their response revision,
a watch stream that reports progress notifications and compaction, and a
long-lived lease keep-alive stream. What calls fail with is in errors.py,
what they return in values.py, and how requests are built in txn.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import grpc
from aetcd import rpc

from pinet.etcd.errors import Compacted, EtcdError, EtcdUnavailable, etcd_call, stream_errors
from pinet.etcd.txn import key_missing, mod_revision_is, op_delete, op_put, prefix_end
from pinet.etcd.values import KeyValue, TxnResult, WatchBatch, WatchEvent
from pinet.runtime.tls import RetiredChannels

if TYPE_CHECKING:
    from pinet.runtime.tls import Tls

log = logging.getLogger(__name__)


_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
    "grpc.max_send_message_length": 16 * 1024 * 1024,
    # Reconnect quickly after an etcd restart instead of gRPC's 120 s cap.
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a dead peer on an idle watch stream.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.optimization_target": "throughput",
}


def parse_endpoint(url: str) -> tuple[str, int, bool]:
    """'https://127.0.0.1:12379' -> (host, port, tls); a bare host:port is
    taken as https."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"etcd endpoint must look like https://host:port, got {url!r}")
    return parsed.hostname, parsed.port or 2379, parsed.scheme == "https"


#: The name every etcd server certificate of the cluster carries.
ETCD_SERVER_NAME = "etcd.pinet"


class Etcd:
    """One connection to etcd. Safe to share between tasks."""

    def __init__(self, endpoint: str, timeout: float = 5.0, tls: Tls | None = None) -> None:
        """With tls, an https:// endpoint is reached with the identity's
        certificate; an http:// one only without (--insecure)."""
        self.endpoint = endpoint
        self.timeout = timeout
        host, port, secure = parse_endpoint(endpoint)
        if secure and tls is None:
            raise ValueError(
                f"{endpoint} is https: give the service its TLS files (or an http:// etcd with --insecure)"
            )
        if tls is not None and not secure:
            raise ValueError(f"TLS is on but the etcd endpoint {endpoint} is plaintext: use https://")
        self.target = f"{host}:{port}"
        self.tls = tls
        self.channel: grpc.aio.Channel | None = None
        self._kv: Any = None
        self._watch: Any = None
        self._lease: Any = None
        self._maintenance: Any = None
        self.auth: Any = None
        self._retired = RetiredChannels()
        self._txn_serialized: Any = None

    def _open_channel(self) -> grpc.aio.Channel:
        options = list(_CHANNEL_OPTIONS.items())
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        options.append(("grpc.ssl_target_name_override", ETCD_SERVER_NAME))
        return grpc.aio.secure_channel(self.target, self.tls.channel_credentials(), options=options)

    async def connect(self) -> Etcd:
        self._use(self._open_channel())
        return self

    async def reopen(self) -> None:
        """A new channel with the TLS files as they are now (after a
        rotation); the old one closes after a grace, and its watches and
        keep-alives resume on the new one, as after any broken stream."""
        old = self.channel
        self._use(self._open_channel())
        if old is not None:
            self._retired.retire(old)

    def _use(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._kv = rpc.KVStub(channel)
        # Txn taking an already serialized TxnRequest: lets the batcher frame
        # many serialized transactions into one request without rebuilding them.
        self._txn_serialized = channel.unary_unary(
            "/etcdserverpb.KV/Txn", request_serializer=None, response_deserializer=rpc.TxnResponse.FromString
        )
        self._lease = rpc.LeaseStub(channel)
        self._maintenance = rpc.MaintenanceStub(channel)
        self._watch = rpc.WatchStub(channel)
        self.auth = rpc.AuthStub(channel)

    async def close(self) -> None:
        await self._retired.close_now()
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None

    async def __aenter__(self) -> Etcd:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until etcd answers, or raise EtcdUnavailable."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.current_revision()
                return
            except EtcdUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    # ------------------------------------------------------------- reads

    @etcd_call
    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._kv.Range(rpc.RangeRequest(key=key), timeout=self.timeout)
        return KeyValue.from_pb(resp.kvs[0]) if resp.kvs else None

    @etcd_call
    async def current_revision(self) -> int:
        # Status, not a range read: with etcd's RBAC on, a service may read
        # only its own prefixes, and Status needs no key permission.
        resp = await self._maintenance.Status(rpc.StatusRequest(), timeout=self.timeout)
        return int(resp.header.revision)

    @etcd_call
    async def count_prefix(self, prefix: bytes) -> int:
        resp = await self._kv.Range(
            rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True),
            timeout=self.timeout,
        )
        return int(resp.count)

    @etcd_call
    async def list_page(
        self, prefix: bytes, start: bytes = b"", limit: int = 500, revision: int = 0, keys_only: bool = False
    ) -> tuple[list[KeyValue], bool, int]:
        """One page of keys under prefix, from start (inclusive).
        Returns (items, more, revision)."""
        resp = await self._kv.Range(
            rpc.RangeRequest(
                key=start or prefix,
                range_end=prefix_end(prefix),
                limit=limit,
                revision=revision,
                keys_only=keys_only,
            ),
            timeout=self.timeout,
        )
        return [KeyValue.from_pb(kv) for kv in resp.kvs], bool(resp.more), int(resp.header.revision)

    async def list_prefix(
        self, prefix: bytes, page_size: int = 2000, revision: int = 0, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Every key under prefix as of one revision, read in pages so that no
        single response grows past gRPC's message limits. Returns
        (items, revision)."""
        items: list[KeyValue] = []
        start = b""
        while True:
            page, more, rev = await self.list_page(prefix, start, page_size, revision, keys_only)
            if revision == 0:
                revision = rev
            items.extend(page)
            if not more or not page:
                return items, revision
            start = page[-1].key + b"\0"

    # ------------------------------------------------------------ writes

    @etcd_call
    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp = await self._kv.Put(rpc.PutRequest(key=key, value=value, lease=lease), timeout=self.timeout)
        return int(resp.header.revision)

    @etcd_call
    async def delete(self, key: bytes) -> int:
        resp = await self._kv.DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=self.timeout)
        return int(resp.deleted)

    @etcd_call
    async def delete_prefix(self, prefix: bytes) -> int:
        resp = await self._kv.DeleteRange(
            rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)), timeout=self.timeout
        )
        return int(resp.deleted)

    @etcd_call
    async def txn(self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> TxnResult:
        resp = await self._kv.Txn(
            rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure)),
            timeout=self.timeout,
        )
        return TxnResult.from_pb(resp)

    @etcd_call
    async def txn_serialized(self, request: bytes) -> TxnResult:
        """Txn of a serialized TxnRequest (see nested_txns)."""
        return TxnResult.from_pb(await self._txn_serialized(request, timeout=self.timeout))

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> int | None:
        """Create key if absent. Returns the revision, or None if it existed."""
        res = await self.txn([key_missing(key)], [op_put(key, value, lease)])
        return res.revision if res.succeeded else None

    async def update(self, key: bytes, value: bytes, mod_revision: int, lease: int = 0) -> int | None:
        """Replace key if it is unchanged since mod_revision. Returns the new
        revision, or None if someone else wrote (or deleted) it first."""
        res = await self.txn([mod_revision_is(key, mod_revision)], [op_put(key, value, lease)])
        return res.revision if res.succeeded else None

    async def delete_if(self, key: bytes, mod_revision: int) -> bool:
        """Delete key if it is unchanged since mod_revision."""
        res = await self.txn([mod_revision_is(key, mod_revision)], [op_delete(key)])
        return res.succeeded

    @etcd_call
    async def compact(self, revision: int, physical: bool = True) -> None:
        await self._kv.Compact(rpc.CompactionRequest(revision=revision, physical=physical), timeout=30)

    # ------------------------------------------------------------ leases

    @etcd_call
    async def grant(self, ttl: int) -> int:
        resp = await self._lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout)
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}")
        return int(resp.ID)

    @etcd_call
    async def revoke(self, lease: int) -> None:
        try:
            await self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    @etcd_call
    async def lease_ttl(self, lease: int) -> int:
        """Remaining TTL in seconds; -1 when the lease no longer exists."""
        resp = await self._lease.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease), timeout=self.timeout)
        return int(resp.TTL)

    async def keepalive(self, lease: int, interval: float) -> AsyncIterator[int]:
        """Refresh lease every interval seconds on one stream; yields the
        granted TTL after each refresh (<= 0 means the lease is gone)."""

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield rpc.LeaseKeepAliveRequest(ID=lease)
                await asyncio.sleep(interval)

        call = self._lease.LeaseKeepAlive(requests())
        try:
            with stream_errors():
                async for resp in call:
                    yield int(resp.TTL)
        finally:
            call.cancel()

    # ------------------------------------------------------------- watch

    async def watch(
        self,
        prefix: bytes,
        start_revision: int,
        progress_notify: bool = True,
        prev_kv: bool = False,
    ) -> AsyncIterator[WatchBatch]:
        """Changes under prefix from start_revision (inclusive), in order.

        With progress_notify, etcd's periodic progress notifications arrive as
        empty batches. (Requested progress notifications are not used: before
        etcd 3.4.25 / 3.5.8 they can report a revision ahead of events still
        in flight, etcd-io/etcd#15220.)

        Raises Compacted when start_revision is older than etcd's history and
        EtcdUnavailable when the stream breaks; the caller resumes from the
        last revision it saw plus one."""
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=prefix,
                    range_end=prefix_end(prefix),
                    start_revision=start_revision,
                    progress_notify=progress_notify,
                    prev_kv=prev_kv,
                )
            )
            # Keep the send side open: closing it would end the stream.
            await stop.wait()

        call = self._watch.Watch(requests())
        try:
            with stream_errors():
                async for resp in call:
                    if resp.compact_revision:
                        raise Compacted(int(resp.compact_revision))
                    if resp.canceled:
                        raise EtcdError(f"watch canceled by etcd: {resp.cancel_reason or 'no reason given'}")
                    if resp.created and not resp.events:
                        continue
                    events = tuple(
                        WatchEvent(
                            deleted=ev.type == rpc.Event.DELETE,
                            kv=KeyValue.from_pb(ev.kv),
                            prev=KeyValue.from_pb(ev.prev_kv) if ev.HasField("prev_kv") else None,
                        )
                        for ev in resp.events
                    )
                    # With events the safe resume point is the last event: etcd
                    # may stamp a catch-up batch with a later header revision.
                    revision = events[-1].kv.mod_revision if events else int(resp.header.revision)
                    yield WatchBatch(revision, events)
                raise EtcdUnavailable("etcd closed the watch stream")
        finally:
            stop.set()
            call.cancel()


@contextlib.asynccontextmanager
async def connect(endpoint: str, timeout: float = 5.0, tls: Tls | None = None) -> AsyncIterator[Etcd]:
    etcd = Etcd(endpoint, timeout, tls)
    await etcd.connect()
    try:
        yield etcd
    finally:
        await etcd.close()
