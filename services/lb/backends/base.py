"""What the lb asks of a kernel load balancer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from services.lb.model import RouterLb, VirtualService, VsKey


class Backend(Protocol):
    kind: str

    def sync(self, r: RouterLb, full: bool) -> list[str]:
        """Program r; full: read the kernel first instead of trusting memory."""

    def update(self, r: RouterLb, changed: Mapping[VsKey, VirtualService | None]) -> list[str]:
        """Apply a few virtual services' changes (None: gone) to a router
        synced before; r carries the router, its services are not looked at.
        Raises KernelError when a full sync is needed first."""

    def read(self, r: RouterLb) -> list[VirtualService]:
        """What the kernel holds in r's namespace (names taken from r)."""

    def draining(self, netns: str) -> bool:
        """Real servers there wait for their connections to finish."""

    def forget(self, netns: str) -> None:
        """The router is gone: drop what is remembered about it."""

    def close(self) -> None: ...
