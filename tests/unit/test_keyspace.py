"""The typed keyspace (pure logic)."""

from __future__ import annotations

import pytest

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.keyspace import PODS, TENANTS, KeyspaceError
from pinet.etcd.txn import prefix_end


def test_keys_and_parts_round_trip() -> None:
    key = PODS.key("acme", "default", "nginx")
    assert key == b"/pinet/v1/pods/acme/default/nginx"
    assert PODS.parts(key) == ("acme", "default", "nginx")
    assert PODS.scope_prefix("acme") == b"/pinet/v1/pods/acme/"
    assert PODS.scope_prefix("acme", "default") == b"/pinet/v1/pods/acme/default/"
    assert TENANTS.key("acme") == b"/pinet/v1/tenants/acme"


@pytest.mark.parametrize("parts", [("acme", "default"), ("acme", "a/b", "x"), ("acme", "", "x"), ("..", "d", "x")])
def test_bad_keys_are_refused(parts: tuple[str, ...]) -> None:
    with pytest.raises(KeyspaceError):
        PODS.key(*parts)


def test_values_are_protobuf() -> None:
    pod = objects_pb2.Pod()
    pod.metadata.name = "nginx"
    pod.metadata.labels["app"] = "nginx"
    assert PODS.decode(PODS.encode(pod)) == pod
    with pytest.raises(KeyspaceError):
        PODS.decode(b"\xff\xff\xff")


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"
