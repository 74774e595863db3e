"""The lb of one host, wired: the informers it follows (declared here),
whose events the change tracker (tracker.py) turns into keys (keys.py) for
the reconciler (reconciler.py), which programs the kernel through a backend
(backends/) on one kernel thread. A periodic full pass reads the kernel
back and repairs drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, Informer, InformerSet
from pinet.etcd.keyspace import ENDPOINTS, FIP_BINDINGS, NODE_LEASES, NODES, PODS, SERVICES, TENANTS
from pinet.hostnet.thread import KernelThread
from pinet.runtime.reconcile import FULL, Reconciler, run_with_resync
from services.lb.backends.base import Backend
from services.lb.host import HostForwarding
from services.lb.keys import LbKey, ServiceRef
from services.lb.model import Desired, Inputs, Scheduler
from services.lb.reconciler import LbReconciler
from services.lb.tracker import ChangeTracker

log = logging.getLogger(__name__)
E = TypeVar("E")


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
        self.node = node
        self.backend = backend
        self.scheduler = scheduler
        self.resync_interval = resync_interval
        self.informers = InformerSet(etcd, "lb")
        self.services = self.informers.follow(SERVICES)
        self.endpoints = self.informers.follow(ENDPOINTS)
        self.bindings = self.informers.follow(FIP_BINDINGS)
        self.tenants = self.informers.follow(TENANTS)
        self.nodes = self.informers.follow(NODES)
        self.pods = self.informers.follow(PODS)
        # Node objects carry their lease: a node is ready while its key exists.
        self.leases = self.informers.follow(NODE_LEASES)
        self.tracker = ChangeTracker(node, self.vni_of, self._service)
        self.kernel_thread = KernelThread("lb-kernel")
        self.queue: Reconciler[LbKey] = Reconciler(f"lb {node}", self._reconcile)
        self.step = LbReconciler(self, backend, host, self.kernel_thread, self.queue.enqueue)
        self._follow(self.services, self.tracker.on_service)
        self._follow(self.endpoints, self.tracker.on_endpoints)
        self._follow(self.bindings, self.tracker.on_binding)
        self._follow(self.pods, self.tracker.on_pod)
        self._follow(self.tenants, self.tracker.on_tenant, replay=False)
        self._follow(self.nodes, self.tracker.on_node, replay=False)
        self._follow(self.leases, self.tracker.on_lease, replay=False)

    def _follow(self, informer: Informer[E], handler: Callable[[Event[E]], list[LbKey]], replay: bool = True) -> None:
        def enqueue(event: Event[E]) -> None:
            for key in handler(event):
                self.queue.enqueue(key)

        informer.subscribe(enqueue, replay=replay)

    async def _reconcile(self, key: LbKey) -> None:
        await self.step.reconcile(key)

    # --------------------------------------------- the reconciler's Source

    def _service(self, ref: ServiceRef) -> objects_pb2.Service | None:
        return self.services.get(SERVICES.key(ref.tenant, ref.namespace, ref.name))

    def vni_of(self, tenant: str) -> int | None:
        t = self.tenants.get(TENANTS.key(tenant))
        return t.network.vni if t is not None else None

    def tenant_of_vni(self, vni: int) -> str | None:
        for t in self.tenants.values():
            if t.network.vni == vni:
                return t.name
        return None

    def is_local(self, tenant: str) -> bool:
        return tenant in self.tracker.local_pods

    def inputs(self, tenant: str | None, only: ServiceRef | None = None) -> Inputs:
        if tenant is None:
            services = self.tracker.services_of(None)
            bindings = self.bindings.values()
            local = frozenset(self.tracker.local_pods)
        else:
            if only is None:
                services = self.tracker.services_of(tenant)
                bindings = self.tracker.bindings_of(tenant)
            else:
                svc = self._service(only)
                services = [svc] if svc is not None else []
                binding = self.tracker.binding_of.get(only)
                bindings = [binding] if binding is not None else []
            local = frozenset({tenant} & set(self.tracker.local_pods))
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
        return self.step.desired(tenant)

    # --------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.informers.start()

    async def run(self) -> None:
        await run_with_resync(self.queue, self.resync_interval, FULL)

    async def stop(self) -> None:
        await self.informers.stop()
        await self.step.close()
