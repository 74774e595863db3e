"""What the lb's reconciler works on: the whole host, the host namespace's
forwarding, one tenant router, or one Service's virtual services."""

from __future__ import annotations

from dataclasses import dataclass

from pinet.runtime.reconcile import FullPass


@dataclass(frozen=True, slots=True)
class HostForwarding:
    """Node ports and floating IPs in the host namespace."""


@dataclass(frozen=True, slots=True)
class Router:
    vni: int


@dataclass(frozen=True, slots=True)
class ServiceRef:
    tenant: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.namespace}/{self.name}"


LbKey = FullPass | HostForwarding | Router | ServiceRef
HOST = HostForwarding()
