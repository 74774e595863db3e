"""What one ipam replica believes about each pool (pure logic).

The used set is fed by a watch on the address keys and by this replica's own
transaction results, so it may briefly lag: it only proposes candidates. The
etcd transaction that claims an address is the judge; a candidate that turns
out taken is marked used and the next one is tried.

Candidates come next-fit from a cursor, so a released address is not handed
out again until the pool wraps (a pod's old address stays unused for as
long as possible), and each replica starts its cursor at a different place
so that replicas rarely race for the same address.
"""

from __future__ import annotations

import random

from services.ipam.pools import PoolLayout


class PoolState:
    def __init__(self, layout: PoolLayout, start: int | None = None) -> None:
        self.layout = layout
        self.used: set[int] = set()
        # Addresses this replica is claiming right now (transaction in flight).
        self.pending: set[int] = set()
        self.cursor = random.randrange(layout.capacity) if start is None else start

    @property
    def used_count(self) -> int:
        return len(self.used)

    @property
    def free_count(self) -> int:
        return self.layout.capacity - len(self.used)

    def mark_used(self, ip: int) -> None:
        if self.layout.contains(ip):
            self.used.add(ip)

    def mark_free(self, ip: int) -> None:
        self.used.discard(ip)

    def replace_used(self, ips: set[int]) -> None:
        self.used = {ip for ip in ips if self.layout.contains(ip)}

    def propose(self) -> int | None:
        """The next address that is neither used nor being claimed, and
        reserve it as pending; None when the pool looks full."""
        if self.free_count - len(self.pending) <= 0:
            return None
        capacity = self.layout.capacity
        for offset, ip in enumerate(self.layout.walk(self.cursor)):
            if ip not in self.used and ip not in self.pending:
                self.cursor = (self.cursor + offset + 1) % capacity
                self.pending.add(ip)
                return ip
        return None

    def settle(self, ip: int, taken: bool) -> None:
        """A claim finished: taken means the address is now allocated (by us or
        by someone who beat us to it)."""
        self.pending.discard(ip)
        if taken:
            self.mark_used(ip)
