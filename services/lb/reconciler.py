"""The lb's reconcile step: one key (lb.keys) brought to the kernel through
a backend (lb.backends) and the host's forwarding, with what each router
holds remembered, so that one Service's change is a transaction of that
Service's own elements. Knows nothing of etcd: what is wanted comes from a
Source (informers.py's LoadBalancer in the service, plain objects in tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import list_netns
from pinet.hostnet.thread import KernelThread
from pinet.runtime.reconcile import FullPass
from services.lb import conntrack
from services.lb.backends.base import Backend
from services.lb.keys import HostForwarding as HostKey
from services.lb.keys import LbKey, Router, ServiceRef
from services.lb.model import Desired, HostLb, Inputs, RouterLb, VirtualService, VsKey, compute

log = logging.getLogger(__name__)
DRAIN_RECHECK = 1.0  # seconds between looks at draining real servers


class Source(Protocol):
    def inputs(self, tenant: str | None, only: ServiceRef | None = None) -> Inputs:
        """All tenants, one tenant, or (only) one Service of that tenant."""

    def tenant_of_vni(self, vni: int) -> str | None: ...

    def vni_of(self, tenant: str) -> int | None: ...

    def is_local(self, tenant: str) -> bool:
        """Whether the tenant has network-ready pods on this host."""


class HostProgrammer(Protocol):
    """The host namespace's forwarding (host.HostForwarding)."""

    def sync(self, h: HostLb, full: bool) -> list[str]: ...

    def close(self) -> None: ...


class LbReconciler:
    def __init__(
        self,
        source: Source,
        backend: Backend,
        host: HostProgrammer,
        kernel_thread: KernelThread,
        enqueue: Callable[[LbKey], None],
        namespaces: Callable[[], set[str]] = list_netns,
    ) -> None:
        self.source = source
        self.backend = backend
        self.host = host
        self.kernel_thread = kernel_thread
        self.enqueue = enqueue
        self.namespaces = namespaces
        self.programmed: dict[int, RouterLb] = {}  # router VNI -> as last synced in full
        self.held: dict[int, dict[VsKey, VirtualService]] = {}  # what each router holds now
        self.service_vs: dict[ServiceRef, set[VsKey]] = {}  # the virtual services each Service made
        self.last_sync = 0.0
        self.last_sync_seconds = 0.0

    def desired(self, tenant: str | None = None) -> Desired:
        return compute(self.source.inputs(tenant))

    async def reconcile(self, key: LbKey) -> None:
        start = time.perf_counter()
        match key:
            case FullPass():
                await self._full()
            case HostKey():
                self._log(await self.kernel_thread.call(self.host.sync, self.desired().host, False))
            case Router(vni):
                tenant = self.source.tenant_of_vni(vni)
                want = self.desired(tenant).routers.get(vni) if tenant else None
                await self._sync_router(vni, want, full=False)
            case ServiceRef():
                await self._sync_service(key)
        self.last_sync = time.time()
        self.last_sync_seconds = time.perf_counter() - start

    async def _full(self) -> None:
        want = self.desired()
        present = await self.kernel_thread.call(self.namespaces)
        for vni in set(self.programmed) - set(want.routers):
            await self._sync_router(vni, None, full=True)
        for vni, r in want.routers.items():
            try:
                if r.netns not in present:
                    raise KernelError(f"{r.netns} is not there yet")
                await self._sync_router(vni, r, full=True)
            except KernelError:
                # Made or removed by the netagent meanwhile: that router alone
                # is retried, the rest of the pass goes on.
                self.enqueue(Router(vni))
        self._log(await self.kernel_thread.call(self.host.sync, want.host, True))

    async def _sync_router(self, vni: int, want: RouterLb | None, full: bool) -> None:
        before = self.programmed.get(vni)
        if want is None:
            # The router went (its netagent removes the namespace with it).
            if before is not None:
                await self.kernel_thread.call(self.backend.forget, before.netns)
                del self.programmed[vni]
                self.held.pop(vni, None)
            return
        self._log(await self.kernel_thread.call(self.backend.sync, want, full))
        old = self.held.get(vni, {})
        self.programmed[vni] = want
        self.held[vni] = dict(want.services)
        for ref in [r for r in self.service_vs if r.tenant == want.tenant]:
            del self.service_vs[ref]
        for key, vs in want.services.items():
            namespace, name = vs.service.split("/")
            self.service_vs.setdefault(ServiceRef(want.tenant, namespace, name), set()).add(key)
        await self._after_change(want, old, want.services)

    async def _sync_service(self, ref: ServiceRef) -> None:
        """One Service's virtual services: a transaction of its own elements."""
        vni = self.source.vni_of(ref.tenant)
        if vni is None or not self.source.is_local(ref.tenant):
            return
        router = self.programmed.get(vni)
        if router is None:
            self.enqueue(Router(vni))  # not synced in full yet
            return
        made = compute(self.source.inputs(ref.tenant, only=ref)).routers.get(vni)
        wanted = dict(made.services) if made is not None else {}
        held = self.held.setdefault(vni, {})
        changed: dict[VsKey, VirtualService | None] = {k: v for k, v in wanted.items() if held.get(k) != v}
        changed.update({k: None for k in self.service_vs.get(ref, set()) - set(wanted)})
        if not changed:
            return
        try:
            self._log(await self.kernel_thread.call(self.backend.update, router, changed))
        except KernelError as exc:
            log.info("%s: a full sync first (%s)", router.netns, exc)
            self.enqueue(Router(vni))
            return
        old = {k: held[k] for k in changed if k in held}
        for key, vs in changed.items():
            if vs is None:
                held.pop(key, None)
            else:
                held[key] = vs
        self.service_vs[ref] = set(wanted)
        await self._after_change(router, old, {k: v for k, v in changed.items() if v is not None})

    async def _after_change(
        self, router: RouterLb, old: Mapping[VsKey, VirtualService], new: Mapping[VsKey, VirtualService]
    ) -> None:
        if self.backend.draining(router.netns):
            asyncio.get_running_loop().call_later(DRAIN_RECHECK, self.enqueue, Router(router.vni))
        gone = removed_udp_servers(old, new)
        if gone:
            self._log(await self.kernel_thread.call(conntrack.forget_udp, router.netns, gone))

    async def close(self) -> None:
        await self.kernel_thread.call(self.backend.close)
        await self.kernel_thread.call(self.host.close)
        self.kernel_thread.stop()

    def _log(self, changes: list[str]) -> None:
        for change in changes:
            log.info("kernel: %s", change)


def removed_udp_servers(
    before: Mapping[VsKey, VirtualService], after: Mapping[VsKey, VirtualService]
) -> list[tuple[VsKey, str]]:
    """(virtual service, endpoint IP) pairs of UDP services whose endpoint
    went: their conntrack entries are dropped so that clients move on."""
    gone = []
    for key, vs in before.items():
        if vs.protocol != "udp":
            continue
        now = after.get(key)
        remaining = {s.ip for s in now.real_servers if s.weight > 0} if now is not None else set()
        gone += [(key, s.ip) for s in vs.real_servers if s.ip not in remaining]
    return gone
