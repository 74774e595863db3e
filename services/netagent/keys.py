"""What the netagent's reconciler works on: the whole host, one tenant
router (its forwarding entries to the tenant's other hosts), one pod's
wiring, the nftables guard of one namespace ("" = the host's), or one
router's network policies."""

from __future__ import annotations

from dataclasses import dataclass

from pinet.runtime.reconcile import FullPass


@dataclass(frozen=True, slots=True)
class Router:
    vni: int


@dataclass(frozen=True, slots=True)
class Pod:
    uid: str


@dataclass(frozen=True, slots=True)
class Guard:
    key: str


@dataclass(frozen=True, slots=True)
class Policies:
    """The network policies' table in one tenant router."""

    vni: int


AgentKey = FullPass | Router | Pod | Guard | Policies
