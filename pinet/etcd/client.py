"""A small asyncio etcd v3 client for pinet.

aetcd provides the generated etcd v3 stubs; pinet owns the channel (so that
it can speak TLS with a client certificate, which etcd maps to a user by its
common name) and calls the stubs directly for the four things aetcd's
higher-level methods do not offer: paged ranges pinned to one revision,
transactions comparing on create/mod revision with their response revision,
a watch stream that reports progress notifications and compaction, and a
long-lived lease keep-alive stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlparse

import aetcd
import grpc
from aetcd import rpc

from pinet.runtime.tls import RetiredChannels

if TYPE_CHECKING:
    from pinet.runtime.tls import Tls

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

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


def _translate(exc: BaseException) -> BaseException:
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


def _etcd_call(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as exc:
            raise _translate(exc) from exc

    return wrapper


def _raise_if_channel_closed() -> None:
    """grpc.aio ends a stream whose channel is closed (a channel replaced by
    reopen()) with CancelledError, as if its task were cancelled. When the
    task is not being cancelled, that is a broken stream: EtcdUnavailable,
    which its owner resumes from."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        raise EtcdUnavailable("the etcd channel was closed (reopened with new TLS files); resume")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with prefix."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: Any) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue
    prev: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response. An empty batch is a progress notification: every
    change up to `revision` has been delivered."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per operation of the branch that ran: a list of KeyValue for
    # a range, the number of deleted keys for a delete, None for a put, a
    # TxnResult for a nested transaction.
    results: tuple[list[KeyValue] | int | TxnResult | None, ...]

    @classmethod
    def from_pb(cls, resp: Any, revision: int = 0) -> TxnResult:
        revision = revision or int(resp.header.revision)
        results: list[list[KeyValue] | int | TxnResult | None] = []
        for r in resp.responses:
            which = r.WhichOneof("response")
            if which == "response_range":
                results.append([KeyValue.from_pb(kv) for kv in r.response_range.kvs])
            elif which == "response_delete_range":
                results.append(int(r.response_delete_range.deleted))
            elif which == "response_txn":
                results.append(TxnResult.from_pb(r.response_txn, revision))
            else:
                results.append(None)
        return cls(bool(resp.succeeded), revision, tuple(results))

    def kvs(self, index: int) -> list[KeyValue]:
        """The key-values of the range operation at index."""
        result = self.results[index]
        if not isinstance(result, list):
            raise TypeError(f"operation {index} was not a range")
        return result


# ------------------------------------------------------------ txn builders


def _compare(key: bytes, target: int, result: int, **value: Any) -> Any:
    return rpc.Compare(key=key, target=target, result=result, **value)


def key_missing(key: bytes) -> Any:
    """Compare: key does not exist (create_revision == 0)."""
    return _compare(key, rpc.Compare.CREATE, rpc.Compare.EQUAL, create_revision=0)


def key_exists(key: bytes) -> Any:
    return _compare(key, rpc.Compare.CREATE, rpc.Compare.GREATER, create_revision=0)


def prefix_empty(prefix: bytes) -> Any:
    """Compare: no key exists under prefix."""
    return rpc.Compare(
        key=prefix,
        range_end=prefix_end(prefix),
        target=rpc.Compare.CREATE,
        result=rpc.Compare.EQUAL,
        create_revision=0,
    )


def unchanged_since(prefix: bytes, revision: int) -> Any:
    """Compare: no key under prefix was created or changed after revision
    (deletions are not seen)."""
    return rpc.Compare(
        key=prefix,
        range_end=prefix_end(prefix),
        target=rpc.Compare.MOD,
        result=rpc.Compare.LESS,
        mod_revision=revision + 1,
    )


def mod_revision_is(key: bytes, revision: int) -> Any:
    """Compare: key was last written at revision (0 means: key absent)."""
    return _compare(key, rpc.Compare.MOD, rpc.Compare.EQUAL, mod_revision=revision)


def create_revision_is(key: bytes, revision: int) -> Any:
    return _compare(key, rpc.Compare.CREATE, rpc.Compare.EQUAL, create_revision=revision)


def value_is(key: bytes, value: bytes) -> Any:
    return _compare(key, rpc.Compare.VALUE, rpc.Compare.EQUAL, value=value)


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def op_delete_prefix(prefix: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)))


def op_get(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def op_get_prefix(prefix: bytes, limit: int = 0) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=limit))


def op_txn(compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> Any:
    """A nested transaction, as one operation of an enclosing one."""
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
    )


def create_all_request(items: Sequence[tuple[bytes, bytes]], read_if_taken: Sequence[bytes] = ()) -> Any:
    """A TxnRequest that puts every (key, value) if none of the keys exists,
    and otherwise reads read_if_taken. Built in place: constructing the
    compares and operations as messages first copies each of them twice."""
    request = rpc.TxnRequest()
    for key, _ in items:
        missing = request.compare.add()
        missing.target = rpc.Compare.CREATE
        missing.key = key
        missing.create_revision = 0
    for key, value in items:
        put = request.success.add().request_put
        put.key = key
        put.value = value
    for key in read_if_taken:
        request.failure.add().request_range.key = key
    return request


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Protobuf tags (field number << 3 | length-delimited) of TxnRequest.success
# and RequestOp.request_txn.
_TXN_SUCCESS_TAG = b"\x12"
_OP_REQUEST_TXN_TAG = b"\x22"


def nested_txns(serialized: Sequence[bytes]) -> bytes:
    """A serialized TxnRequest with no compares whose success operations are
    the given serialized TxnRequests as nested transactions: the same bytes
    as serializing TxnRequest(success=[op_txn(...), ...]), without parsing
    and copying each transaction again."""
    parts = []
    for txn in serialized:
        op = _OP_REQUEST_TXN_TAG + _varint(len(txn)) + txn
        parts.append(_TXN_SUCCESS_TAG + _varint(len(op)) + op)
    return b"".join(parts)


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

    @_etcd_call
    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._kv.Range(rpc.RangeRequest(key=key), timeout=self.timeout)
        return KeyValue.from_pb(resp.kvs[0]) if resp.kvs else None

    @_etcd_call
    async def current_revision(self) -> int:
        # Status, not a range read: with etcd's RBAC on, a service may read
        # only its own prefixes, and Status needs no key permission.
        resp = await self._maintenance.Status(rpc.StatusRequest(), timeout=self.timeout)
        return int(resp.header.revision)

    @_etcd_call
    async def count_prefix(self, prefix: bytes) -> int:
        resp = await self._kv.Range(
            rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True),
            timeout=self.timeout,
        )
        return int(resp.count)

    @_etcd_call
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

    @_etcd_call
    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp = await self._kv.Put(rpc.PutRequest(key=key, value=value, lease=lease), timeout=self.timeout)
        return int(resp.header.revision)

    @_etcd_call
    async def delete(self, key: bytes) -> int:
        resp = await self._kv.DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=self.timeout)
        return int(resp.deleted)

    @_etcd_call
    async def delete_prefix(self, prefix: bytes) -> int:
        resp = await self._kv.DeleteRange(
            rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)), timeout=self.timeout
        )
        return int(resp.deleted)

    @_etcd_call
    async def txn(self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> TxnResult:
        resp = await self._kv.Txn(
            rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure)),
            timeout=self.timeout,
        )
        return TxnResult.from_pb(resp)

    @_etcd_call
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

    @_etcd_call
    async def compact(self, revision: int, physical: bool = True) -> None:
        await self._kv.Compact(rpc.CompactionRequest(revision=revision, physical=physical), timeout=30)

    # ------------------------------------------------------------ leases

    @_etcd_call
    async def grant(self, ttl: int) -> int:
        resp = await self._lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout)
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}")
        return int(resp.ID)

    @_etcd_call
    async def revoke(self, lease: int) -> None:
        try:
            await self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    @_etcd_call
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
            async for resp in call:
                yield int(resp.TTL)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        except asyncio.CancelledError:
            _raise_if_channel_closed()
            raise
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
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        except asyncio.CancelledError:
            _raise_if_channel_closed()
            raise
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
