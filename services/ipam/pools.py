"""Pool layouts (pure logic): which addresses a pool may hand out.

A pool is one or more ranges (CIDRs or "a-b" spans) minus the network and
broadcast addresses of its CIDRs, minus reserved addresses, minus ranges
excluded because another pool owns them. Addresses are handled as integers;
the allocatable set is a sorted list of disjoint inclusive intervals, so a
/16 costs a few intervals, not 65,536 entries.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pinet.api.ipam.v1 import ipam_pb2
from pinet.runtime.errors import invalid

Interval = tuple[int, int]  # inclusive bounds

DEFAULT_NETWORK = "default"
DEFAULT_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.244.240.0/20"
# Gateway (.1), DNS (.2) and room for future platform addresses.
PLATFORM_RESERVED_COUNT = 9
FLOATING_POOL = "floating"

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


def pod_pool_name(tenant: str, network: str = DEFAULT_NETWORK) -> str:
    return f"{tenant}.{network}.pod"


def service_pool_name(tenant: str, network: str = DEFAULT_NETWORK) -> str:
    return f"{tenant}.{network}.svc"


def ip_to_int(text: str, field: str) -> int:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise invalid(f"{field}: {text!r} is not an IP address") from None
    if addr.version != 4:
        raise invalid(f"{field}: {text!r} is IPv6; pinet v1 pools are IPv4")
    return int(addr)


def int_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4))


def parse_span(text: str, field: str) -> tuple[Interval, bool]:
    """'10.0.0.0/24' or '10.0.0.5-10.0.0.9' or '10.0.0.7' -> (interval, is_cidr)."""
    text = text.strip()
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise invalid(f"{field}: {text!r} is not a valid CIDR ({exc})") from None
        if net.version != 4:
            raise invalid(f"{field}: {text!r} is IPv6; pinet v1 pools are IPv4")
        return (int(net.network_address), int(net.broadcast_address)), True
    if "-" in text:
        first, _, last = text.partition("-")
        lo, hi = ip_to_int(first, field), ip_to_int(last, field)
        if lo > hi:
            raise invalid(f"{field}: range {text!r} ends before it starts")
        return (lo, hi), False
    value = ip_to_int(text, field)
    return (value, value), False


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def subtract(base: list[Interval], holes: list[Interval]) -> list[Interval]:
    """base minus holes; both sorted and disjoint."""
    out: list[Interval] = []
    holes = merge(holes)
    for lo, hi in base:
        cur = lo
        for hlo, hhi in holes:
            if hhi < cur or hlo > hi:
                continue
            if hlo > cur:
                out.append((cur, hlo - 1))
            cur = max(cur, hhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def size(intervals: Iterable[Interval]) -> int:
    return sum(hi - lo + 1 for lo, hi in intervals)


def overlaps(a: list[Interval], b: list[Interval]) -> bool:
    return size(a) + size(b) != size(merge([*a, *b]))


@dataclass(frozen=True)
class PoolLayout:
    name: str
    kind: int
    tenant: str
    network: str
    allocatable: list[Interval]
    # Reserved, network and broadcast addresses inside the ranges.
    reserved_count: int

    # size(allocatable), kept because the allocation path asks for it.
    capacity: int

    @classmethod
    def from_pool(cls, pool: ipam_pb2.Pool) -> PoolLayout:
        """Validate a pool and compute its layout; raises ApiError."""
        if not _NAME.match(pool.name):
            raise invalid(
                f"pool.name: {pool.name!r} must be lowercase letters, digits, '-' and '.', at most 63 characters"
            )
        if pool.kind == ipam_pb2.POOL_KIND_UNSPECIFIED:
            raise invalid("pool.kind: must be POOL_KIND_POD, POOL_KIND_SERVICE or POOL_KIND_FLOATING")
        if pool.kind == ipam_pb2.POOL_KIND_FLOATING and pool.tenant:
            raise invalid("pool.tenant: the floating-IP pool is shared by all tenants; leave tenant empty")
        if pool.kind != ipam_pb2.POOL_KIND_FLOATING and not pool.tenant:
            raise invalid("pool.tenant: pod and service pools belong to a tenant network; set tenant")
        if not pool.ranges:
            raise invalid("pool.ranges: give at least one CIDR or range")
        spans: list[Interval] = []
        edges: list[Interval] = []
        for i, text in enumerate(pool.ranges):
            (lo, hi), is_cidr = parse_span(text, f"pool.ranges[{i}]")
            spans.append((lo, hi))
            if is_cidr and hi - lo >= 3:
                # Network and broadcast addresses are never handed out
                # (/31 and /32 have none).
                edges += [(lo, lo), (hi, hi)]
        ranges = merge(spans)
        if size(ranges) != sum(hi - lo + 1 for lo, hi in spans):
            raise invalid("pool.ranges: ranges overlap each other")
        reserved = [parse_span(t, f"pool.reserved[{i}]")[0] for i, t in enumerate(pool.reserved)]
        excluded = [parse_span(t, f"pool.excluded[{i}]")[0] for i, t in enumerate(pool.excluded)]
        for field, spans_ in (("reserved", reserved), ("excluded", excluded)):
            for i, span in enumerate(spans_):
                if subtract([span], ranges):
                    raise invalid(f"pool.{field}[{i}]: {getattr(pool, field)[i]!r} is not inside the pool's ranges")
        allocatable = subtract(subtract(ranges, excluded), [*edges, *reserved])
        if not allocatable:
            raise invalid("pool.ranges: nothing is left to allocate once reserved addresses are removed")
        in_ranges_not_excluded = subtract(ranges, excluded)
        return cls(
            name=pool.name,
            kind=pool.kind,
            tenant=pool.tenant,
            network=pool.network,
            allocatable=allocatable,
            capacity=size(allocatable),
            reserved_count=size(in_ranges_not_excluded) - size(allocatable),
        )

    # ------------------------------------------------------------- lookup

    def contains(self, ip: int) -> bool:
        i = bisect.bisect_right(self.allocatable, (ip, 1 << 33)) - 1
        return i >= 0 and self.allocatable[i][0] <= ip <= self.allocatable[i][1]

    def at(self, index: int) -> int:
        """The index-th allocatable address (0 <= index < capacity)."""
        for lo, hi in self.allocatable:
            span = hi - lo + 1
            if index < span:
                return lo + index
            index -= span
        raise IndexError(index)

    def index_of(self, ip: int) -> int:
        index = 0
        for lo, hi in self.allocatable:
            if lo <= ip <= hi:
                return index + ip - lo
            index += hi - lo + 1
        raise ValueError(int_to_ip(ip))

    def walk(self, start: int) -> Iterable[int]:
        """Every allocatable address once, from the start-th, wrapping."""
        first = self.at(start % self.capacity)
        for phase in (0, 1):
            for lo, hi in self.allocatable:
                if phase == 0:
                    if hi < first:
                        continue
                    yield from range(max(lo, first), hi + 1)
                else:
                    if lo >= first:
                        return
                    yield from range(lo, min(hi, first - 1) + 1)


def network_pools(
    tenant: str, network: str = DEFAULT_NETWORK, cidr: str = "", service_cidr: str = ""
) -> tuple[ipam_pb2.Pool, ipam_pb2.Pool]:
    """The pod and service pools of a tenant network, with pinet's defaults:
    the service range comes out of the network, and the first nine host
    addresses (gateway, DNS and spares) are reserved for the platform."""
    cidr = cidr or DEFAULT_CIDR
    service_cidr = service_cidr or DEFAULT_SERVICE_CIDR
    (net_lo, net_hi), _ = parse_span(cidr, "cidr")
    (svc_lo, svc_hi), _ = parse_span(service_cidr, "service_cidr")
    if not (net_lo <= svc_lo and svc_hi <= net_hi):
        raise invalid(f"service_cidr: {service_cidr} is not inside the network {cidr}")
    if net_hi - net_lo < 64:
        raise invalid(f"cidr: {cidr} is too small for a tenant network (at least a /25)")
    reserved = f"{int_to_ip(net_lo + 1)}-{int_to_ip(net_lo + PLATFORM_RESERVED_COUNT)}"
    if net_lo + PLATFORM_RESERVED_COUNT >= svc_lo:
        raise invalid(f"service_cidr: {service_cidr} overlaps the platform's reserved addresses {reserved}")
    pod = ipam_pb2.Pool(
        name=pod_pool_name(tenant, network),
        kind=ipam_pb2.POOL_KIND_POD,
        tenant=tenant,
        network=network,
        ranges=[cidr],
        reserved=[reserved],
        excluded=[service_cidr],
    )
    svc = ipam_pb2.Pool(
        name=service_pool_name(tenant, network),
        kind=ipam_pb2.POOL_KIND_SERVICE,
        tenant=tenant,
        network=network,
        ranges=[service_cidr],
    )
    return pod, svc
