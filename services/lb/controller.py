"""The lb's reconciler: informers over services, endpoints, floating-IP
bindings, tenants, nodes and this node's pods feed the model; a change is
reconciled per tenant router ("router:<vni>") or for the host namespace
("host"), so one service's change touches only its own router's kernel
objects. A periodic full pass reads the kernel back and repairs drift.
Kernel calls run on one worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, Informer
from pinet.etcd.keyspace import ENDPOINTS, FIP_BINDINGS, NODE_LEASES, NODES, PODS, SERVICES, TENANTS
from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import list_netns
from pinet.hostnet.thread import KernelThread
from pinet.runtime.reconcile import Reconciler, run_with_resync
from services.lb import conntrack
from services.lb.backend import Backend
from services.lb.host import HostForwarding
from services.lb.model import (
    NODE_PORT_TYPES,
    Desired,
    Inputs,
    RouterLb,
    Scheduler,
    VirtualService,
    VsKey,
    compute,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DRAIN_RECHECK = 1.0  # seconds between looks at draining real servers
ServiceRef = tuple[str, str, str]  # tenant, namespace, name


class LoadBalancer:
    def __init__(
        self,
        etcd: Etcd,
        node: str,
        backend: Backend,
        host: HostForwarding,
        scheduler: Scheduler = Scheduler.ROUND_ROBIN,
        resync_interval: float = 30.0,
    ) -> None:
        self.etcd = etcd
        self.node = node
        self.backend = backend
        self.host = host
        self.scheduler = scheduler
        self.resync_interval = resync_interval
        self.services: Informer[objects_pb2.Service] = Informer(etcd, SERVICES.prefix, SERVICES.decode, "lb-svc")
        self.endpoints: Informer[objects_pb2.Endpoints] = Informer(etcd, ENDPOINTS.prefix, ENDPOINTS.decode, "lb-ep")
        self.bindings: Informer[objects_pb2.FloatingIPBinding] = Informer(
            etcd, FIP_BINDINGS.prefix, FIP_BINDINGS.decode, "lb-fip"
        )
        self.tenants: Informer[objects_pb2.Tenant] = Informer(etcd, TENANTS.prefix, TENANTS.decode, "lb-tenants")
        self.nodes: Informer[objects_pb2.Node] = Informer(etcd, NODES.prefix, NODES.decode, "lb-nodes")
        self.pods: Informer[objects_pb2.Pod] = Informer(etcd, PODS.prefix, PODS.decode, "lb-pods")
        # A node is ready while its agent's heartbeat key lives.
        self.leases: Informer[objects_pb2.Node] = Informer(
            etcd, NODE_LEASES.prefix, NODE_LEASES.decode, "lb-node-leases"
        )
        self.informers: list[Informer[Any]] = [
            self.tenants, self.nodes, self.leases, self.pods, self.services, self.endpoints, self.bindings,
        ]  # fmt: skip
        self.reconciler: Reconciler[str] = Reconciler(f"lb {node}", self.reconcile)
        self.kernel_thread = KernelThread("lb-kernel")
        self._by_tenant: dict[str, dict[bytes, objects_pb2.Service]] = {}
        self._local_pods: dict[str, set[str]] = {}  # tenant -> uids of its network-ready pods here
        self._programmed: dict[int, RouterLb] = {}  # router (its services as last synced in full)
        self._vs: dict[int, dict[VsKey, VirtualService]] = {}  # what each router holds now
        self._svc_keys: dict[ServiceRef, set[VsKey]] = {}  # the virtual services each Service made
        self._binding_of: dict[ServiceRef, objects_pb2.FloatingIPBinding] = {}
        self.last_sync = 0.0
        self.last_sync_seconds = 0.0
        self.services.subscribe(self._on_service)
        self.endpoints.subscribe(self._on_endpoints)
        self.bindings.subscribe(self._on_binding)
        self.pods.subscribe(self._on_pod)
        self.tenants.subscribe(lambda _: self.reconciler.enqueue("full"), replay=False)
        self.nodes.subscribe(self._on_node, replay=False)
        self.leases.subscribe(self._on_lease, replay=False)

    # ------------------------------------------------------------ events

    def _vni(self, tenant: str) -> int | None:
        t = self.tenants.get(TENANTS.key(tenant))
        return t.network.vni if t is not None else None

    def _touch(self, ref: ServiceRef, host: bool) -> None:
        if ref[0] in self._local_pods:
            self.reconciler.enqueue("svc:" + "/".join(ref))
        if host:
            self.reconciler.enqueue("host")

    def _on_service(self, event: Event[objects_pb2.Service]) -> None:
        ref = SERVICES.parts(event.key)
        bucket = self._by_tenant.setdefault(ref[0], {})
        if event.type is EventType.DELETED:
            bucket.pop(event.key, None)
        else:
            bucket[event.key] = event.obj
        external = event.obj.spec.type in NODE_PORT_TYPES or (
            event.old is not None and event.old.spec.type in NODE_PORT_TYPES
        )
        self._touch((ref[0], ref[1], ref[2]), host=external)

    def _on_endpoints(self, event: Event[objects_pb2.Endpoints]) -> None:
        tenant, namespace, name = ENDPOINTS.parts(event.key)
        svc = self.services.get(SERVICES.key(tenant, namespace, name))
        external = svc is not None and svc.spec.type in NODE_PORT_TYPES
        self._touch((tenant, namespace, name), host=external)

    def _on_binding(self, event: Event[objects_pb2.FloatingIPBinding]) -> None:
        def ref_of(b: objects_pb2.FloatingIPBinding) -> ServiceRef:
            return (b.tenant, b.namespace, b.service)

        if event.old is not None:
            self._binding_of.pop(ref_of(event.old), None)
            self._touch(ref_of(event.old), host=True)
        if event.type is EventType.DELETED:
            self._binding_of.pop(ref_of(event.obj), None)
        else:
            self._binding_of[ref_of(event.obj)] = event.obj
        self._touch(ref_of(event.obj), host=True)

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        pod = event.obj
        if pod.spec.node_name != self.node:
            return
        tenant, uid = pod.metadata.tenant, pod.metadata.uid
        # Network-ready: the netagent has made the tenant's router by then, so
        # the lb programs it at once instead of retrying until it exists.
        wired = event.type is not EventType.DELETED and pod.status.network_ready and bool(pod.status.pod_ip)
        wired = wired and not pod.metadata.HasField("deletion_timestamp")
        pods = self._local_pods.setdefault(tenant, set())
        if wired == (uid in pods):
            return
        if wired:
            pods.add(uid)
        else:
            pods.discard(uid)
        if not pods:
            del self._local_pods[tenant]
        vni = self._vni(tenant)
        if vni is not None:
            self.reconciler.enqueue(f"router:{vni}")
        self.reconciler.enqueue("host")

    def _on_lease(self, event: Event[objects_pb2.Node]) -> None:
        if event.old is None or event.type is EventType.DELETED:  # a node became ready or went
            self.reconciler.enqueue("full")

    def _on_node(self, event: Event[objects_pb2.Node]) -> None:
        if event.old is None or event.old.underlay_ip != event.obj.underlay_ip:
            self.reconciler.enqueue("full")

    # ------------------------------------------------------------- model

    def inputs(self, tenant: str | None, only: ServiceRef | None = None) -> Inputs:
        """All tenants, one tenant, or (only) one Service of that tenant."""
        if tenant is None:
            services = [s for bucket in self._by_tenant.values() for s in bucket.values()]
            bindings = self.bindings.values()
            local = frozenset(self._local_pods)
        else:
            if only is None:
                services = list(self._by_tenant.get(tenant, {}).values())
                bindings = [b for ref, b in self._binding_of.items() if ref[0] == tenant]
            else:
                svc = self.services.get(SERVICES.key(*only))
                services = [svc] if svc is not None else []
                binding = self._binding_of.get(only)
                bindings = [binding] if binding is not None else []
            local = frozenset({tenant} & set(self._local_pods))
        endpoints = {}
        for svc in services:
            ref = (svc.metadata.tenant, svc.metadata.namespace, svc.metadata.name)
            eps = self.endpoints.get(ENDPOINTS.key(*ref))
            if eps is not None:
                endpoints[ref] = eps
        return Inputs(
            node=self.node,
            services=services,
            endpoints=endpoints,
            bindings=bindings,
            tenants={t.name: t for t in self.tenants.values()},
            underlay={
                n.name: n.underlay_ip
                for n in self.nodes.values()
                if n.underlay_ip and NODE_LEASES.key(n.name) in self.leases
            },
            local_tenants=local,
            scheduler=self.scheduler,
            own_underlay=own.underlay_ip if (own := self.nodes.get(NODES.key(self.node))) is not None else "",
        )

    def desired(self, tenant: str | None = None) -> Desired:
        return compute(self.inputs(tenant))

    def tenant_of_vni(self, vni: int) -> str | None:
        for t in self.tenants.values():
            if t.network.vni == vni:
                return t.name
        return None

    # --------------------------------------------------------- lifecycle

    async def start(self) -> None:
        for informer in self.informers:
            informer.start()
        for informer in self.informers:
            await informer.wait_synced()

    async def run(self) -> None:
        await run_with_resync(self.reconciler, self.resync_interval, "full")

    async def stop(self) -> None:
        for informer in self.informers:
            await informer.stop()
        await self.kernel_thread.call(self.backend.close)
        await self.kernel_thread.call(self.host.close)
        self.kernel_thread.stop()

    # --------------------------------------------------------- reconcile

    async def reconcile(self, key: str) -> None:
        start = time.perf_counter()
        kind, _, ident = key.partition(":")
        if kind == "full":
            await self._full()
        elif kind == "host":
            self._log(await self.kernel_thread.call(self.host.sync, self.desired().host, False))
        elif kind == "router":
            tenant = self.tenant_of_vni(int(ident))
            want = self.desired(tenant).routers.get(int(ident)) if tenant else None
            await self._sync_router(int(ident), want, full=False)
        elif kind == "svc":
            tenant, namespace, name = ident.split("/")
            await self._sync_service((tenant, namespace, name))
        self.last_sync = time.time()
        self.last_sync_seconds = time.perf_counter() - start

    async def _full(self) -> None:
        want = self.desired()
        present = await self.kernel_thread.call(list_netns)
        for vni in set(self._programmed) - set(want.routers):
            await self._sync_router(vni, None, full=True)
        for vni, r in want.routers.items():
            try:
                if r.netns not in present:
                    raise KernelError(f"{r.netns} is not there yet")
                await self._sync_router(vni, r, full=True)
            except KernelError:
                # Made or removed by the netagent meanwhile: that router alone
                # is retried, the rest of the pass goes on.
                self.reconciler.enqueue(f"router:{vni}")
        self._log(await self.kernel_thread.call(self.host.sync, want.host, True))

    async def _sync_router(self, vni: int, want: RouterLb | None, full: bool) -> None:
        before = self._programmed.get(vni)
        if want is None:
            # The router went (its netagent removes the namespace with it).
            if before is not None:
                await self.kernel_thread.call(self.backend.forget, before.netns)
                del self._programmed[vni]
                self._vs.pop(vni, None)
            return
        self._log(await self.kernel_thread.call(self.backend.sync, want, full))
        old = self._vs.get(vni, {})
        self._programmed[vni] = want
        self._vs[vni] = dict(want.services)
        for ref in [r for r in self._svc_keys if r[0] == want.tenant]:
            del self._svc_keys[ref]
        for key, vs in want.services.items():
            namespace, name = vs.service.split("/")
            self._svc_keys.setdefault((want.tenant, namespace, name), set()).add(key)
        await self._after_change(want, old, want.services)

    async def _sync_service(self, ref: ServiceRef) -> None:
        """One Service's virtual services: a transaction of its own elements."""
        vni = self._vni(ref[0])
        if vni is None or ref[0] not in self._local_pods:
            return
        router = self._programmed.get(vni)
        if router is None:
            self.reconciler.enqueue(f"router:{vni}")  # not synced in full yet
            return
        made = compute(self.inputs(ref[0], only=ref)).routers.get(vni)
        wanted = dict(made.services) if made is not None else {}
        held = self._vs.setdefault(vni, {})
        changed: dict[VsKey, VirtualService | None] = {k: v for k, v in wanted.items() if held.get(k) != v}
        changed.update({k: None for k in self._svc_keys.get(ref, set()) - set(wanted)})
        if not changed:
            return
        try:
            self._log(await self.kernel_thread.call(self.backend.update, router, changed))
        except KernelError as exc:
            log.info("%s: a full sync first (%s)", router.netns, exc)
            self.reconciler.enqueue(f"router:{vni}")
            return
        old = {k: held[k] for k in changed if k in held}
        for key, vs in changed.items():
            if vs is None:
                held.pop(key, None)
            else:
                held[key] = vs
        self._svc_keys[ref] = set(wanted)
        await self._after_change(router, old, {k: v for k, v in changed.items() if v is not None})

    async def _after_change(
        self, router: RouterLb, old: Mapping[VsKey, VirtualService], new: Mapping[VsKey, VirtualService]
    ) -> None:
        if self.backend.draining(router.netns):
            asyncio.get_running_loop().call_later(DRAIN_RECHECK, self.reconciler.enqueue, f"router:{router.vni}")
        gone = removed_udp_servers(old, new)
        if gone:
            self._log(await self.kernel_thread.call(conntrack.forget_udp, router.netns, gone))

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
