"""What etcd calls return, as plain frozen values: key-values, watch
batches and transaction results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
