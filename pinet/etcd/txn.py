"""Building etcd requests (pure): range ends, the comparisons and operations
of transactions, and transactions built in place or nested without copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aetcd import rpc


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with prefix."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


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
