"""The agent: its informers (declared here), its reconciler and the
helpers its API (servicer.py) answers from.

Informers over pods, tenants and nodes give the desired wiring of this host
(desired.compute); the reconciler makes the kernel equal to it, one pod or
router at a time, and a periodic full pass removes what no pod explains and
repairs what drifted. Kernel calls run on one worker thread.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from pinet.api.netagent.v1 import netagent_pb2
from pinet.api.network.v1 import objects_pb2, policy_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, InformerSet
from pinet.etcd.keyspace import NAMESPACES, NETWORK_POLICIES, NODES, PODS, TENANTS
from pinet.hostnet import names
from pinet.hostnet.netns import netns_path
from pinet.hostnet.thread import KernelThread
from pinet.objects.podnetwork import NetworkReports
from pinet.runtime.errors import failed_precondition, invalid, not_found, unavailable
from pinet.runtime.reconcile import FULL, FullPass, Reconciler, run_with_resync
from services.netagent import desired, isolation
from services.netagent.kernel import Kernel
from services.netagent.keys import AgentKey, Guard, Pod, Policies, Router
from services.netagent.policies import AgentPolicies
from services.netagent.registration import NodeRegistration

log = logging.getLogger(__name__)

DROPPED = Counter(
    "pinet_netagent_dropped_packets_total",
    "Packets the isolation rules dropped on this host, by reason, and by tenant for the rules in its router "
    "(empty for the host's own).",
    ["reason", "tenant"],
)
DROP_REASONS = {
    isolation.INFRA_DROPS: "infrastructure",
    isolation.VXLAN_DROPS: "vxlan-not-from-peer",
    isolation.SPOOF_DROPS: "spoofed",
    isolation.CT_LIMIT_DROPS: "conntrack-limit",
}
# Drop counters are read back this often (in guard intervals).
COUNTER_EVERY = 5
# How long Attach and Detach wait for the reconciler (it may be in a full pass).
ATTACH_TIMEOUT = 30.0


class Agent:
    def __init__(
        self, etcd: Etcd, node: str, kernel: Kernel, resync_interval: float = 10.0, guard_interval: float = 1.0
    ) -> None:
        self.etcd = etcd
        self.node = node
        self.kernel = kernel
        self.resync_interval = resync_interval
        self.guard_interval = guard_interval
        self._counted: dict[tuple[str, str], int] = {}  # (namespace key, counter) -> packets counted so far
        self.registration: NodeRegistration | None = None  # set by the app: its addresses follow the host
        self.informers = InformerSet(etcd, "netagent")
        self.tenants = self.informers.follow(TENANTS)
        self.nodes = self.informers.follow(NODES)
        self.pods = self.informers.follow(PODS)
        self.network_policies = self.informers.follow(NETWORK_POLICIES)
        self.namespaces = self.informers.follow(NAMESPACES)
        self.policies = AgentPolicies(
            lambda tenant: [p for p in self.pods.values() if p.metadata.tenant == tenant],
            lambda tenant: [p for p in self.network_policies.values() if p.metadata.tenant == tenant],
            lambda tenant: [n for n in self.namespaces.values() if n.metadata.tenant == tenant],
        )
        self.reconciler: Reconciler[AgentKey] = Reconciler(f"netagent {node}", self.reconcile)
        self.kernel_thread = KernelThread("kernel")
        self.attached: dict[str, str] = {}  # pod uid -> runtime namespace path
        self.detaching: dict[str, str] = {}  # pod uid -> the runtime namespace a Detach unwires
        self.reports = NetworkReports(etcd, node)
        self.pods.subscribe(self._on_pod)
        self.network_policies.subscribe(self._on_policy)
        self.namespaces.subscribe(self._on_namespace)
        self.tenants.subscribe(lambda _: self.reconciler.enqueue(FULL), replay=False)
        self.nodes.subscribe(lambda _: self.reconciler.enqueue(FULL), replay=False)

    async def start(self) -> None:
        await self.informers.start()
        await self.reports.load()
        for pod in self.pods.values():
            # Runtime namespaces survive an agent restart in etcd.
            if (
                pod.spec.node_name == self.node
                and pod.metadata.annotations.get(desired.RUNTIME_NETNS) == "runtime"
                and pod.status.netns
            ):
                self.attached[pod.metadata.uid] = pod.status.netns

    async def host_addresses(self) -> list[str]:
        return await self.kernel_thread.call(self.kernel.host_addresses)

    async def run(self) -> None:
        guard = asyncio.create_task(self._watch_guard(), name="netagent-guard")
        try:
            await run_with_resync(self.reconciler, self.resync_interval, FULL)
        finally:
            guard.cancel()

    async def _watch_guard(self) -> None:
        """Any change to nftables in a namespace of ours (by anyone) has the
        guard there read back and repaired within a guard interval, rather
        than at the next full pass; and the drop counters are exported."""
        ticks = 0
        while True:
            await asyncio.sleep(self.guard_interval)
            try:
                for key in await self.kernel_thread.call(self.kernel.firewall.changed):
                    self.reconciler.enqueue(Guard(key))
                ticks += 1
                if ticks % COUNTER_EVERY == 0:
                    tenants = {r.netns: r.tenant for r in self.wanted().routers.values()}
                    self._export_counters(await self.kernel_thread.call(self.kernel.refresh_counters), tenants)
                    self.policies.export(await self.kernel_thread.call(self.kernel.policies.read_counters), tenants)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("guard check failed: %s", exc)

    def _export_counters(self, counters: dict[str, dict[str, int]], tenants: dict[str, str]) -> None:
        """tenants: router namespace -> its tenant."""
        for key, values in counters.items():
            for path, packets in values.items():
                reason = DROP_REASONS.get(path.rsplit(" ", 1)[-1])
                if reason is None:
                    continue
                before = self._counted.get((key, path), 0)
                # A table made anew starts its counters again from zero.
                DROPPED.labels(reason, tenants.get(key, "")).inc(packets - before if packets >= before else packets)
                self._counted[(key, path)] = packets

    async def stop(self) -> None:
        await self.informers.stop()
        await self.kernel_thread.call(self.kernel.close)
        self.kernel_thread.stop()

    # -------------------------------------------------------- desired

    def wanted(self) -> desired.HostWiring:
        tenants = {t.name: t for t in self.tenants.values()}
        nodes = self.nodes.values()
        underlay = {n.name: n.underlay_ip for n in nodes if n.underlay_ip}
        addresses = [a for n in nodes for a in n.host_addresses]
        return desired.compute(self.node, self.pods.values(), tenants, underlay, self.attached, addresses)

    def _vni_of(self, pod: objects_pb2.Pod) -> int | None:
        tenant = self.tenants.get(TENANTS.key(pod.metadata.tenant))
        return tenant.network.vni if tenant is not None else None

    def _vni_of_tenant(self, tenant: str) -> int | None:
        found = self.tenants.get(TENANTS.key(tenant))
        return found.network.vni if found is not None else None

    def _on_policy(self, event: Event[policy_pb2.NetworkPolicy]) -> None:
        tenant = event.obj.metadata.tenant
        self.policies.on_policy(tenant, event.obj, event.type is EventType.DELETED)
        vni = self._vni_of_tenant(tenant)
        if vni is not None:
            self.reconciler.enqueue(Policies(vni))

    def _on_namespace(self, event: Event[policy_pb2.Namespace]) -> None:
        vni = self._vni_of_tenant(event.obj.metadata.tenant)
        if self.policies.on_namespace(event.obj, event.type is EventType.DELETED) and vni is not None:
            self.reconciler.enqueue(Policies(vni))

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        pod = event.obj
        vni = self._vni_of(pod)
        if self.policies.on_pod(pod, event.type is EventType.DELETED) and vni is not None:
            self.reconciler.enqueue(Policies(vni))
        if pod.spec.node_name == self.node:
            if event.type is EventType.DELETED:
                self.attached.pop(pod.metadata.uid, None)
            wiring_changed = (
                event.old is None
                or event.type is EventType.DELETED
                or event.old.status.pod_ip != pod.status.pod_ip
                or event.old.metadata.annotations != pod.metadata.annotations
            )
            if wiring_changed:
                self.reconciler.enqueue(Pod(pod.metadata.uid))
        elif vni is not None and (event.old is None or event.type is EventType.DELETED or
                                  event.old.spec.node_name != pod.spec.node_name):  # fmt: skip
            # A remote pod of a tenant we may route for: forwarding entries.
            self.reconciler.enqueue(Router(vni))

    # ------------------------------------------------------ reconcile

    async def reconcile(self, key: AgentKey) -> list[str] | None:
        """The kernel changes a pod's reconcile made (Attach and Detach answer
        with them); None for the other keys."""
        want = self.wanted()
        match key:
            case FullPass():
                await self._full(want)
            case Router(vni):
                router = want.routers.get(vni)
                if router is not None:
                    changes = await self.kernel_thread.call(self.kernel.ensure_router, router, want.host_sets())
                    self._log(changes)
                    await self._sync_policies(router, full=True)
                elif names.router_netns(self.node, vni) in await self.kernel_thread.call(self.kernel.owned_netns):
                    self._log(await self._remove_router(names.router_netns(self.node, vni), want))
            case Pod(uid):
                return await self._reconcile_pod(uid, want)
            case Guard(namespace):
                await self._reconcile_guard(namespace, want)
            case Policies(vni):
                router = want.routers.get(vni)
                if router is not None and router.netns in await self.kernel_thread.call(self.kernel.owned_netns):
                    await self._sync_policies(router, full=False)
        return None

    async def _sync_policies(self, router: desired.RouterWiring, full: bool) -> None:
        """The router's policy table: changes since the last sync applied as
        they are, or (full, or not synced by this agent) the whole state
        read back and repaired; removed when the tenant has no policies."""
        engine = self.policies.engines.get(router.tenant)
        if engine is None:
            self._log(await self.kernel_thread.call(self.kernel.policies.remove, router.netns))
            return
        changes = engine.flush()
        if full or not await self.kernel_thread.call(self.kernel.policies.update, router.netns, changes):
            self._log(await self.kernel_thread.call(self.kernel.policies.ensure, router.netns, engine.state()))
        elif changes:
            log.debug("kernel: %s: %d policy elements", router.netns, changes.count())

    async def _reconcile_guard(self, netns: str, want: desired.HostWiring) -> None:
        """The nftables of one namespace changed: read back, repaired."""
        if not netns:
            if want.routers:
                self._log(await self.kernel_thread.call(self.kernel.ensure_host, want.host_sets()))
            return
        router = next((r for r in want.routers.values() if r.netns == netns), None)
        if router is not None and netns in await self.kernel_thread.call(self.kernel.owned_netns):
            self._log(await self.kernel_thread.call(self.kernel.ensure_router_guard, router))

    async def _remove_router(self, netns: str, want: desired.HostWiring) -> list[str]:
        changes = await self.kernel_thread.call(self.kernel.remove_router, netns, want.host_sets())
        if not want.routers:
            # The host's own table lives while the host has routers.
            changes += await self.kernel_thread.call(self.kernel.remove_host)
        return changes

    async def _reconcile_pod(self, uid: str, want: desired.HostWiring) -> list[str]:
        wiring = want.pods.get(uid)
        if wiring is None:
            # A Detach's namespace is kept until the unwiring has worked, so
            # that a retry after a failure unwires the same namespace.
            changes = await self._remove_pod(uid, want, runtime_netns=self.detaching.get(uid, ""))
            self.detaching.pop(uid, None)
            return changes
        router = want.routers[wiring.vni]
        fenced = self.policies.engines.get(router.tenant) is not None
        created = fenced and router.netns not in await self.kernel_thread.call(self.kernel.owned_netns)
        changes = await self.kernel_thread.call(self.kernel.ensure_router_for_pod, router, want.host_sets())
        if fenced:
            # A pod is wired only behind its policies.
            await self._sync_policies(router, full=created)
        changes += await self.kernel_thread.call(self.kernel.pods.ensure, wiring, router.netns)
        self._log(changes)
        await self.reports.report(wiring.tenant, wiring.namespace, wiring.name, uid, True, netns_path(wiring.netns))
        return changes

    async def _remove_pod(self, uid: str, want: desired.HostWiring, runtime_netns: str = "") -> list[str]:
        """Unwire pod uid wherever it is; runtime_netns names the runtime's
        namespace when it was attached through CNI."""
        owned = await self.kernel_thread.call(self.kernel.owned_netns)
        routers = [n for n in owned if names.router_vni(self.node, n) is not None]
        changes: list[str] = []
        for router_ns in routers:
            links = await self.kernel_thread.call(self.kernel.pods.links_in, router_ns)
            if uid in links:
                netns = runtime_netns or names.pod_netns(self.node, uid)
                changes += await self.kernel_thread.call(
                    self.kernel.pods.remove, uid, router_ns, links[uid], netns, not runtime_netns
                )
                if names.router_vni(self.node, router_ns) not in want.routers:
                    changes += await self._remove_router(router_ns, want)
        pod_ns = names.pod_netns(self.node, uid)
        if pod_ns in owned:
            changes += await self.kernel_thread.call(self.kernel.pods.remove_orphan, pod_ns)
        self._log(changes)
        if not runtime_netns:
            await self.reports.forget(uid)
        return changes

    async def _full(self, want: desired.HostWiring) -> None:
        if self.registration is not None:
            await self.registration.set_host_addresses(await self.kernel_thread.call(self.kernel.host_addresses))
        owned = await self.kernel_thread.call(self.kernel.owned_netns)
        wanted_pod_ns = {p.netns for p in want.pods.values() if p.agent_owned}
        wanted_router_ns = {r.netns for r in want.routers.values()}
        changes: list[str] = []
        for name in owned:
            if names.is_pod_netns(self.node, name) and name not in wanted_pod_ns:
                changes += await self.kernel_thread.call(self.kernel.pods.remove_orphan, name)
            elif names.router_vni(self.node, name) is not None and name not in wanted_router_ns:
                changes += await self.kernel_thread.call(self.kernel.remove_router, name, want.host_sets())
        for router in want.routers.values():
            if router.netns in owned:
                links = await self.kernel_thread.call(self.kernel.pods.links_in, router.netns)
                for uid, ifname in links.items():
                    if uid not in want.pods:
                        changes += await self.kernel_thread.call(
                            self.kernel.pods.remove, uid, router.netns, ifname, "", False
                        )
        # The host's own table lives while the host has routers.
        if want.routers:
            changes += await self.kernel_thread.call(self.kernel.ensure_host, want.host_sets())
        else:
            changes += await self.kernel_thread.call(self.kernel.remove_host)
        self._log(changes)
        # A pod still on this node keeps its report (a detached one's says so).
        local = {p.metadata.uid for p in self.pods.values() if p.spec.node_name == self.node}
        await self.reports.forget_all_but(set(want.pods) | set(self.attached) | local)
        for vni in want.routers:
            self.reconciler.enqueue(Router(vni))
        for uid in want.pods:
            self.reconciler.enqueue(Pod(uid))

    def _log(self, changes: list[str]) -> None:
        for change in changes:
            log.info("kernel: %s", change)

    # ------------------------------------------------------ API helpers

    async def settle_pod(self, pod: objects_pb2.Pod | None, uid: str = "") -> list[str]:
        """Has the reconciler bring one pod's wiring to what is wanted now."""
        uid = uid or (pod.metadata.uid if pod is not None else "")
        try:
            changes: list[str] | None = await self.reconciler.settle(Pod(uid), timeout=ATTACH_TIMEOUT)
        except TimeoutError:
            name = pod.metadata.name if pod is not None else uid
            raise unavailable(
                f"pod {name}: the agent did not finish its wiring within {ATTACH_TIMEOUT:.0f} s; retry"
            ) from None
        return changes or []

    def find_pod(self, ref: netagent_pb2.PodRef) -> objects_pb2.Pod:
        if not (ref.tenant and ref.name):
            raise invalid("pod.tenant and pod.name: required")
        pod = self.pods.get(PODS.key(ref.tenant, ref.namespace or "default", ref.name))
        if pod is None or (ref.uid and pod.metadata.uid != ref.uid):
            raise not_found(f"pod {ref.namespace or 'default'}/{ref.name} of tenant {ref.tenant} not found")
        if pod.spec.node_name != self.node:
            raise failed_precondition(f"pod {pod.metadata.name} is scheduled on {pod.spec.node_name}, not {self.node}")
        if not pod.status.pod_ip:
            raise failed_precondition(f"pod {pod.metadata.name} has no address yet")
        return pod

    def attachment(self, wiring: desired.PodWiring, router: desired.RouterWiring) -> netagent_pb2.Attachment:
        return netagent_pb2.Attachment(
            pod=netagent_pb2.PodRef(tenant=wiring.tenant, namespace=wiring.namespace, name=wiring.name, uid=wiring.uid),
            netns_path=netns_path(wiring.netns),
            interface_name="eth0",
            mac=wiring.mac,
            address_cidr=wiring.address_cidr,
            gateway=wiring.gateway,
            mtu=self.kernel.mtu,
            host_interface=f"{router.netns}/{wiring.host_ifname}",
            dns_servers=[wiring.dns_ip],
            dns_search=[f"{wiring.namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            dns_options=["ndots:5"],
        )
