"""The agent's reconciler and its gRPC API.

Informers over pods, tenants and nodes give the desired wiring of this host
(desired.compute); the reconciler makes the kernel equal to it, one pod or
router at a time, and a periodic full pass removes what no pod explains and
repairs what drifted. Kernel calls run on one worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter

from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, Informer
from pinet.etcd.keyspace import NODES, PODS, TENANTS
from pinet.hostnet import names
from pinet.hostnet.netns import netns_path
from pinet.hostnet.thread import KernelThread
from pinet.objects.podnetwork import NetworkReports
from pinet.runtime.errors import failed_precondition, invalid, not_found
from pinet.runtime.reconcile import Reconciler, run_with_resync
from pinet.runtime.servicer import unary
from services.netagent import desired, isolation
from services.netagent.kernel import Kernel
from services.netagent.registration import NodeRegistration

log = logging.getLogger(__name__)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

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
        self.pods: Informer[objects_pb2.Pod] = Informer(etcd, PODS.prefix, PODS.decode, "agent-pods")
        self.tenants: Informer[objects_pb2.Tenant] = Informer(etcd, TENANTS.prefix, TENANTS.decode, "agent-tenants")
        self.nodes: Informer[objects_pb2.Node] = Informer(etcd, NODES.prefix, NODES.decode, "agent-nodes")
        self.reconciler: Reconciler[str] = Reconciler(f"netagent {node}", self.reconcile)
        self.kernel_thread = KernelThread("kernel")
        self.attached: dict[str, str] = {}  # pod uid -> runtime namespace path
        self.reports = NetworkReports(etcd, node)
        self.pods.subscribe(self._on_pod)
        self.tenants.subscribe(lambda _: self.reconciler.enqueue("full"), replay=False)
        self.nodes.subscribe(lambda _: self.reconciler.enqueue("full"), replay=False)

    async def start(self) -> None:
        for informer in (self.tenants, self.nodes, self.pods):
            informer.start()
        for informer in (self.tenants, self.nodes, self.pods):
            await informer.wait_synced()
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
            await run_with_resync(self.reconciler, self.resync_interval, "full")
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
                    self.reconciler.enqueue(f"guard:{key}")
                ticks += 1
                if ticks % COUNTER_EVERY == 0:
                    self._export_counters(await self.kernel_thread.call(self.kernel.refresh_counters))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("guard check failed: %s", exc)

    def _export_counters(self, counters: dict[str, dict[str, int]]) -> None:
        tenants = {r.netns: r.tenant for r in self.wanted().routers.values()}
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
        for informer in (self.pods, self.tenants, self.nodes):
            await informer.stop()
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

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        pod = event.obj
        vni = self._vni_of(pod)
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
                self.reconciler.enqueue(f"pod:{pod.metadata.uid}")
        elif vni is not None and (event.old is None or event.type is EventType.DELETED or
                                  event.old.spec.node_name != pod.spec.node_name):  # fmt: skip
            # A remote pod of a tenant we may route for: forwarding entries.
            self.reconciler.enqueue(f"router:{vni}")

    # ------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        kind, _, ident = key.partition(":")
        want = self.wanted()
        if kind == "full":
            await self._full(want)
        elif kind == "router":
            vni = int(ident)
            router = want.routers.get(vni)
            if router is not None:
                changes = await self.kernel_thread.call(self.kernel.ensure_router, router, want.host_sets())
                self._log(changes)
            elif names.router_netns(self.node, vni) in await self.kernel_thread.call(self.kernel.owned_netns):
                self._log(await self._remove_router(names.router_netns(self.node, vni), want))
        elif kind == "pod":
            await self._reconcile_pod(ident, want)
        elif kind == "guard":
            await self._reconcile_guard(ident, want)

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

    async def _reconcile_pod(self, uid: str, want: desired.HostWiring) -> None:
        wiring = want.pods.get(uid)
        if wiring is None:
            await self._remove_pod(uid, want)
            return
        router = want.routers[wiring.vni]
        changes = await self.kernel_thread.call(self.kernel.ensure_router_for_pod, router, want.host_sets())
        changes += await self.kernel_thread.call(self.kernel.ensure_pod, wiring, router.netns)
        self._log(changes)
        await self.reports.report(wiring.tenant, wiring.namespace, wiring.name, uid, True, netns_path(wiring.netns))

    async def _remove_pod(self, uid: str, want: desired.HostWiring, runtime_netns: str = "") -> bool:
        """Unwire pod uid wherever it is; runtime_netns names the runtime's
        namespace when it was attached through CNI. True if anything went."""
        owned = await self.kernel_thread.call(self.kernel.owned_netns)
        routers = [n for n in owned if names.router_vni(self.node, n) is not None]
        changes: list[str] = []
        for router_ns in routers:
            links = await self.kernel_thread.call(self.kernel.router_pod_links, router_ns)
            if uid in links:
                netns = runtime_netns or names.pod_netns(self.node, uid)
                changes += await self.kernel_thread.call(
                    self.kernel.remove_pod, uid, router_ns, links[uid], netns, not runtime_netns
                )
                if names.router_vni(self.node, router_ns) not in want.routers:
                    changes += await self._remove_router(router_ns, want)
        pod_ns = names.pod_netns(self.node, uid)
        if pod_ns in owned:
            changes += await self.kernel_thread.call(self.kernel.remove_orphan_netns, pod_ns)
        self._log(changes)
        if not runtime_netns:
            await self.reports.forget(uid)
        return bool(changes)

    async def _full(self, want: desired.HostWiring) -> None:
        if self.registration is not None:
            await self.registration.set_host_addresses(await self.kernel_thread.call(self.kernel.host_addresses))
        owned = await self.kernel_thread.call(self.kernel.owned_netns)
        wanted_pod_ns = {p.netns for p in want.pods.values() if p.agent_owned}
        wanted_router_ns = {r.netns for r in want.routers.values()}
        changes: list[str] = []
        for name in owned:
            if names.is_pod_netns(self.node, name) and name not in wanted_pod_ns:
                changes += await self.kernel_thread.call(self.kernel.remove_orphan_netns, name)
            elif names.router_vni(self.node, name) is not None and name not in wanted_router_ns:
                changes += await self.kernel_thread.call(self.kernel.remove_router, name, want.host_sets())
        for router in want.routers.values():
            if router.netns in owned:
                links = await self.kernel_thread.call(self.kernel.router_pod_links, router.netns)
                for uid, ifname in links.items():
                    if uid not in want.pods:
                        changes += await self.kernel_thread.call(
                            self.kernel.remove_pod, uid, router.netns, ifname, "", False
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
            self.reconciler.enqueue(f"router:{vni}")
        for uid in want.pods:
            self.reconciler.enqueue(f"pod:{uid}")

    def _log(self, changes: list[str]) -> None:
        for change in changes:
            log.info("kernel: %s", change)

    # ------------------------------------------------------ API helpers

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


class AgentServicer(netagent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @unary
    async def Attach(self, request: netagent_pb2.AttachRequest, context: Context) -> netagent_pb2.AttachResponse:
        agent = self.agent
        pod = agent.find_pod(request.pod)
        uid = pod.metadata.uid
        runtime = pod.metadata.annotations.get(desired.RUNTIME_NETNS) == "runtime"
        if request.interface_name and request.interface_name != "eth0":
            raise invalid("interface_name: pinet wires eth0 only")
        if request.netns_path:
            if not runtime:
                raise invalid(
                    f"netns_path: pod {pod.metadata.name} is not runtime-managed "
                    f"(annotate it {desired.RUNTIME_NETNS}: runtime)"
                )
            if not request.netns_path.startswith("/run/netns/") and not request.netns_path.startswith(
                "/var/run/netns/"
            ):
                raise invalid("netns_path: must be a named namespace under /run/netns")
            path = request.netns_path.replace("/var/run/netns/", "/run/netns/")
            previous = agent.attached.get(uid)
            if previous and previous != path:
                raise failed_precondition(f"pod {pod.metadata.name} is attached to {previous} already")
            agent.attached[uid] = path
        elif runtime and uid not in agent.attached:
            raise invalid("netns_path: required for a runtime-managed pod")
        want = agent.wanted()
        wiring = want.pods[uid]
        router = want.routers[wiring.vni]
        changes = await agent.kernel_thread.call(agent.kernel.ensure_router_for_pod, router, want.host_sets())
        changes += await agent.kernel_thread.call(agent.kernel.ensure_pod, wiring, router.netns)
        agent._log(changes)
        await agent.reports.report(wiring.tenant, wiring.namespace, wiring.name, uid, True, netns_path(wiring.netns))
        return netagent_pb2.AttachResponse(attachment=agent.attachment(wiring, router), created=bool(changes))

    @unary
    async def Detach(self, request: netagent_pb2.DetachRequest, context: Context) -> netagent_pb2.DetachResponse:
        agent = self.agent
        ref = request.pod
        pod = agent.pods.get(PODS.key(ref.tenant, ref.namespace or "default", ref.name)) if ref.tenant else None
        uid = ref.uid or (pod.metadata.uid if pod is not None else "")
        if pod is not None and pod.metadata.annotations.get(desired.RUNTIME_NETNS) != "runtime":
            raise failed_precondition(f"pod {pod.metadata.name} is wired by the agent itself; delete the pod instead")
        if not uid or uid not in agent.attached:
            return netagent_pb2.DetachResponse(removed=False)
        path = agent.attached.pop(uid)
        removed = await agent._remove_pod(uid, agent.wanted(), runtime_netns=path)
        if pod is not None:
            m = pod.metadata
            await agent.reports.report(m.tenant, m.namespace, m.name, m.uid, False, "", "detached")
        agent.reconciler.enqueue("full")
        return netagent_pb2.DetachResponse(removed=removed)

    @unary
    async def Check(self, request: netagent_pb2.CheckRequest, context: Context) -> netagent_pb2.CheckResponse:
        agent = self.agent
        pod = agent.find_pod(request.pod)
        want = agent.wanted()
        wiring = want.pods.get(pod.metadata.uid)
        if wiring is None:
            return netagent_pb2.CheckResponse(healthy=False, problems=["the pod is not attached"])
        router = want.routers[wiring.vni]
        problems = await agent.kernel_thread.call(agent.kernel.check_pod, wiring, router.netns)
        return netagent_pb2.CheckResponse(
            healthy=not problems, problems=problems, attachment=agent.attachment(wiring, router)
        )

    @unary
    async def List(self, request: netagent_pb2.ListRequest, context: Context) -> netagent_pb2.ListResponse:
        want = self.agent.wanted()
        size = min(request.page_size or 500, 5000)
        uids = sorted(
            uid for uid, w in want.pods.items()
            if (not request.tenant or w.tenant == request.tenant) and uid > request.page_token
        )  # fmt: skip
        resp = netagent_pb2.ListResponse()
        for uid in uids[:size]:
            wiring = want.pods[uid]
            resp.attachments.append(self.agent.attachment(wiring, want.routers[wiring.vni]))
        if len(uids) > size:
            resp.next_page_token = uids[size - 1]
        return resp
