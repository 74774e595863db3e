"""Pool layouts and the per-replica pool state (pure logic)."""

from __future__ import annotations

import grpc
import pytest

from pinet.api.ipam.v1 import ipam_pb2
from pinet.runtime.errors import ApiError
from services.ipam.pools import PoolLayout, int_to_ip, ip_to_int, merge, network_pools, subtract
from services.ipam.state import PoolState


def ip(text: str) -> int:
    return ip_to_int(text, "test")


def test_default_tenant_network_layout() -> None:
    pod, svc = network_pools("acme")
    pod_layout, svc_layout = PoolLayout.from_pool(pod), PoolLayout.from_pool(svc)
    assert pod.name == "acme.default.pod" and svc.name == "acme.default.svc"
    # /16 minus the /20 service range, the network address and .1-.9.
    assert pod_layout.capacity == 65536 - 4096 - 1 - 9
    assert not pod_layout.contains(ip("10.244.0.0"))
    assert not pod_layout.contains(ip("10.244.0.1")), "gateway"
    assert not pod_layout.contains(ip("10.244.0.2")), "DNS"
    assert not pod_layout.contains(ip("10.244.0.9"))
    assert pod_layout.contains(ip("10.244.0.10"))
    assert pod_layout.contains(ip("10.244.239.255"))
    assert not pod_layout.contains(ip("10.244.240.1")), "service range"
    assert svc_layout.capacity == 4096 - 2
    assert svc_layout.contains(ip("10.244.240.1")) and not svc_layout.contains(ip("10.244.255.255"))
    assert pod_layout.reserved_count == 10


def test_floating_pool_of_ranges() -> None:
    pool = ipam_pb2.Pool(
        name="floating",
        kind=ipam_pb2.POOL_KIND_FLOATING,
        ranges=["203.0.113.0/24", "198.51.100.10-198.51.100.19"],
        reserved=["203.0.113.1"],
    )
    layout = PoolLayout.from_pool(pool)
    assert layout.capacity == 254 - 1 + 10
    assert layout.contains(ip("198.51.100.10")) and layout.contains(ip("198.51.100.19"))
    assert not layout.contains(ip("198.51.100.20"))


BAD_POOLS = [
    (dict(name="Bad_Name", kind=1, tenant="a", ranges=["10.0.0.0/24"]), "pool.name"),
    (dict(name="p", kind=0, tenant="a", ranges=["10.0.0.0/24"]), "pool.kind"),
    (dict(name="p", kind=3, tenant="a", ranges=["10.0.0.0/24"]), "pool.tenant"),
    (dict(name="p", kind=1, ranges=["10.0.0.0/24"]), "pool.tenant"),
    (dict(name="p", kind=1, tenant="a", ranges=[]), "pool.ranges"),
    (dict(name="p", kind=1, tenant="a", ranges=["10.0.0.1/24"]), "pool.ranges[0]"),
    (dict(name="p", kind=1, tenant="a", ranges=["fd00::/64"]), "IPv6"),
    (dict(name="p", kind=1, tenant="a", ranges=["10.0.0.9-10.0.0.1"]), "ends before it starts"),
    (dict(name="p", kind=1, tenant="a", ranges=["10.0.0.0/24", "10.0.0.128/25"]), "overlap"),
    (dict(name="p", kind=1, tenant="a", ranges=["10.0.0.0/24"], reserved=["10.0.1.1"]), "pool.reserved[0]"),
    (dict(name="p", kind=1, tenant="a", ranges=["10.0.0.0/30"], reserved=["10.0.0.1-10.0.0.2"]), "nothing is left"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_POOLS)
def test_invalid_pools_are_rejected_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ApiError) as err:
        PoolLayout.from_pool(ipam_pb2.Pool(**fields))  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.message


def test_interval_arithmetic() -> None:
    assert merge([(5, 9), (1, 3), (4, 4)]) == [(1, 9)]
    assert subtract([(0, 10)], [(3, 4), (8, 20)]) == [(0, 2), (5, 7)]
    assert int_to_ip(ip("10.1.2.3")) == "10.1.2.3"


def test_walk_visits_every_address_once_from_any_start() -> None:
    layout = PoolLayout.from_pool(
        ipam_pb2.Pool(
            name="p",
            kind=ipam_pb2.POOL_KIND_FLOATING,
            ranges=["10.0.0.0/29", "10.0.1.5-10.0.1.7"],
            reserved=["10.0.0.3"],
        )
    )
    everything = sorted(layout.walk(0))
    assert len(everything) == layout.capacity == 6 - 1 + 3
    for start in range(layout.capacity):
        walked = list(layout.walk(start))
        assert sorted(walked) == everything and walked[0] == layout.at(start)


def test_state_proposes_next_fit_and_never_twice() -> None:
    layout = PoolLayout.from_pool(ipam_pb2.Pool(name="p", kind=ipam_pb2.POOL_KIND_FLOATING, ranges=["10.0.0.0/29"]))
    state = PoolState(layout, start=0)
    first = state.propose()
    second = state.propose()
    assert (first, second) == (ip("10.0.0.1"), ip("10.0.0.2")), "pending addresses are not proposed again"
    state.settle(ip("10.0.0.1"), taken=True)
    state.settle(ip("10.0.0.2"), taken=False)
    state.mark_free(ip("10.0.0.1"))
    # Released and abandoned addresses come back only after the cursor wraps.
    assert [state.propose() for _ in range(4)] == [ip(f"10.0.0.{i}") for i in (3, 4, 5, 6)]
    assert state.propose() == ip("10.0.0.1")
    assert state.propose() == ip("10.0.0.2")
    assert state.propose() is None, "a pool with everything pending or used is full"
