"""Group commit (pinet.etcd.batch) against a real etcd: each submission is
judged on its own compares, submissions that write the same key never share
a request, and the framing of serialized transactions is exactly what
protobuf would have written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aetcd import rpc

from pinet.devstack.etcd import EtcdServer
from pinet.etcd.batch import TxnBatcher
from pinet.etcd.client import Etcd
from pinet.etcd.errors import EtcdUnavailable
from pinet.etcd.txn import create_all_request, key_missing, nested_txns, op_get, op_put, op_txn


def test_nested_txns_frames_like_protobuf() -> None:
    # Values of 1, 130 and 20,000 bytes give one-, two- and three-byte lengths.
    txns = [
        ([key_missing(b"/a")], [op_put(b"/a", b"x")], [op_get(b"/a")]),
        ([key_missing(b"/b")], [op_put(b"/b", b"y" * 130)], []),
        ([], [op_put(b"/c", b"z" * 20_000)], []),
    ]
    serialized = [rpc.TxnRequest(compare=c, success=s, failure=f).SerializeToString() for c, s, f in txns]
    expected = rpc.TxnRequest(success=[op_txn(c, s, f) for c, s, f in txns]).SerializeToString()
    assert nested_txns(serialized) == expected
    assert nested_txns([]) == b""


def test_create_all_request_matches_the_message_builders() -> None:
    built = create_all_request([(b"/k1", b"v1"), (b"/k2", b"v2")], read_if_taken=[b"/k2"])
    by_builders = rpc.TxnRequest(
        compare=[key_missing(b"/k1"), key_missing(b"/k2")],
        success=[op_put(b"/k1", b"v1"), op_put(b"/k2", b"v2")],
        failure=[op_get(b"/k2")],
    )
    assert built == by_builders


async def test_concurrent_submissions_share_round_trips_and_are_judged_alone(etcd: Etcd, prefix: bytes) -> None:
    taken = [prefix + f"taken{i}".encode() for i in range(20)]
    for key in taken:
        await etcd.put(key, b"old")
    batcher = TxnBatcher(etcd)
    try:
        fresh = [prefix + f"fresh{i}".encode() for i in range(200)]
        # A second claim of a fresh key races its twin; both write the same
        # key, so they must travel in different requests.
        keys = fresh + taken + fresh[:30]
        results = await asyncio.gather(
            *(batcher.txn(create_all_request([(k, b"new")], read_if_taken=[k])) for k in keys)
        )
    finally:
        await batcher.stop()

    by_key: dict[bytes, list[bool]] = {}
    for key, res in zip(keys, results, strict=True):
        by_key.setdefault(key, []).append(res.succeeded)
        if not res.succeeded:
            assert [kv.key for kv in res.kvs(0)] == [key], "the failure branch read the taken key"
    for key in fresh[30:]:
        assert by_key[key] == [True]
    for key in fresh[:30]:
        assert sorted(by_key[key]) == [False, True], f"exactly one claim of {key!r} wins"
    for key in taken:
        assert by_key[key] == [False]
        kv = await etcd.get(key)
        assert kv is not None and kv.value == b"old", "a failed compare wrote nothing"
    assert batcher.submitted == len(keys)
    assert batcher.round_trips < len(keys) / 4, f"{batcher.round_trips} round trips for {len(keys)} claims"


async def test_a_failed_round_trip_fails_every_submission_in_it(make_etcd_server: Callable[[], EtcdServer]) -> None:
    server = make_etcd_server()
    etcd = await server.client(timeout=2).connect()
    batcher = TxnBatcher(etcd)
    try:
        server.stop(kill=True)
        outcomes = await asyncio.gather(
            *(batcher.txn(create_all_request([(f"/k{i}".encode(), b"v")])) for i in range(10)),
            return_exceptions=True,
        )
        assert all(isinstance(o, EtcdUnavailable) for o in outcomes), outcomes
    finally:
        await batcher.stop()
        await etcd.close()


@pytest.mark.parametrize("writes_given", [True, False])
async def test_written_keys_known_or_found(etcd: Etcd, prefix: bytes, writes_given: bool) -> None:
    batcher = TxnBatcher(etcd)
    key = prefix + b"k"
    try:
        request = create_all_request([(key, b"v")])
        writes = frozenset({key}) if writes_given else None
        first, second = await asyncio.gather(batcher.txn(request, writes), batcher.txn(request, writes))
    finally:
        await batcher.stop()
    assert sorted([first.succeeded, second.succeeded]) == [False, True]


async def test_batches_stay_within_etcds_operation_budget(etcd: Etcd, prefix: bytes) -> None:
    # Claims of two keys each, like the ipam's: a request nesting 127 of them
    # is one operation over etcd's default --max-txn-ops.
    batcher = TxnBatcher(etcd, linger=0.02)
    try:
        results = await asyncio.gather(
            *(
                batcher.txn(create_all_request([(prefix + f"a{i}".encode(), b"v"), (prefix + f"h{i}".encode(), b"v")]))
                for i in range(400)
            )
        )
    finally:
        await batcher.stop()
    assert all(r.succeeded for r in results)
    assert batcher.round_trips <= 8, f"{batcher.round_trips} round trips for 400 claims"
