"""The lb's reconcile step (services/lb/reconciler.py) against a recording
backend: what each key asks of the kernel, and that one Service's change
asks only for that Service's virtual services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pinet.api.network.v1 import objects_pb2
from pinet.hostnet.command import KernelError
from pinet.hostnet.thread import KernelThread
from pinet.runtime.reconcile import FULL
from services.lb.keys import HOST, LbKey, Router, ServiceRef
from services.lb.model import HostLb, Inputs, RouterLb, VirtualService, VsKey
from services.lb.reconciler import LbReconciler
from tests.helpers.lb_objects import eps, inputs, svc

WEB = ServiceRef("a", "default", "web")
API = ServiceRef("a", "default", "api")
NETNS = "pinet-h1-r4096"


@dataclass
class RecordingBackend:
    kind: str = "recording"
    calls: list[tuple[str, object]] = field(default_factory=list)
    fail_updates: bool = False

    def sync(self, r: RouterLb, full: bool) -> list[str]:
        self.calls.append(("sync", (r.vni, full, sorted(r.services))))
        return []

    def update(self, r: RouterLb, changed: Mapping[VsKey, VirtualService | None]) -> list[str]:
        if self.fail_updates:
            raise KernelError("the router was made anew")
        self.calls.append(("update", {k: (v.real_servers if v else None) for k, v in changed.items()}))
        return []

    def read(self, r: RouterLb) -> list[VirtualService]:
        return []

    def draining(self, netns: str) -> bool:
        return False

    def forget(self, netns: str) -> None:
        self.calls.append(("forget", netns))

    def close(self) -> None:
        pass


@dataclass
class RecordingHost:
    synced: list[tuple[HostLb, bool]] = field(default_factory=list)

    def sync(self, h: HostLb, full: bool) -> list[str]:
        self.synced.append((h, full))
        return []

    def close(self) -> None:
        pass


@dataclass
class Cluster:
    """The Source: plain lists a test edits between reconciles."""

    services: list[objects_pb2.Service]
    endpoints: list[objects_pb2.Endpoints]
    local: set[str] = field(default_factory=lambda: {"a"})

    def inputs(self, tenant: str | None, only: ServiceRef | None = None) -> Inputs:
        chosen = [
            s for s in self.services
            if (tenant is None or s.metadata.tenant == tenant)
            and (only is None or (s.metadata.namespace, s.metadata.name) == (only.namespace, only.name))
        ]  # fmt: skip
        local = frozenset(self.local if tenant is None else self.local & {tenant})
        return inputs(chosen, self.endpoints, local=local)

    def tenant_of_vni(self, vni: int) -> str | None:
        return {4096: "a", 4097: "b"}.get(vni)

    def vni_of(self, tenant: str) -> int | None:
        return {"a": 4096, "b": 4097}.get(tenant)

    def is_local(self, tenant: str) -> bool:
        return tenant in self.local


def lab(cluster: Cluster, present: set[str] | None = None) -> tuple[LbReconciler, RecordingBackend, list[LbKey]]:
    backend = RecordingBackend()
    queued: list[LbKey] = []
    step = LbReconciler(
        cluster, backend, RecordingHost(), KernelThread("test-lb"), queued.append,
        namespaces=lambda: {NETNS} if present is None else present,
    )  # fmt: skip
    return step, backend, queued


def two_services() -> Cluster:
    return Cluster(
        [svc("web"), svc("api", ip="10.244.240.11")],
        [eps("web", ("10.244.0.5", "h1", True)), eps("api", ("10.244.0.9", "h1", True))],
    )


async def test_full_pass_syncs_each_router_in_full_and_the_host() -> None:
    step, backend, queued = lab(two_services())
    await step.reconcile(FULL)
    assert backend.calls == [("sync", (4096, True, [("10.244.240.10", "tcp", 80), ("10.244.240.11", "tcp", 80)]))]
    assert isinstance(step.host, RecordingHost) and [full for _, full in step.host.synced] == [True]
    assert queued == []


async def test_one_service_change_updates_only_its_own_virtual_services() -> None:
    cluster = two_services()
    step, backend, _ = lab(cluster)
    await step.reconcile(FULL)
    backend.calls.clear()
    cluster.endpoints[0] = eps("web", ("10.244.0.5", "h1", True), ("10.244.0.6", "h1", True))
    await step.reconcile(WEB)
    assert len(backend.calls) == 1
    kind, changed = backend.calls[0]
    assert kind == "update" and isinstance(changed, dict)
    assert list(changed) == [("10.244.240.10", "tcp", 80)], "api is not touched"
    assert [s.ip for s in changed[("10.244.240.10", "tcp", 80)]] == ["10.244.0.5", "10.244.0.6"]
    await step.reconcile(WEB)
    assert len(backend.calls) == 1, "nothing changed: nothing asked of the kernel"


async def test_a_deleted_service_has_its_virtual_services_removed() -> None:
    cluster = two_services()
    step, backend, _ = lab(cluster)
    await step.reconcile(FULL)
    backend.calls.clear()
    del cluster.services[1]
    await step.reconcile(API)
    assert backend.calls == [("update", {("10.244.240.11", "tcp", 80): None})]


async def test_a_service_before_its_router_is_synced_asks_for_the_router() -> None:
    step, backend, queued = lab(two_services())
    await step.reconcile(WEB)
    assert backend.calls == [] and queued == [Router(4096)]


async def test_a_failed_update_falls_back_to_the_router() -> None:
    cluster = two_services()
    step, backend, queued = lab(cluster)
    await step.reconcile(FULL)
    backend.fail_updates = True
    cluster.endpoints[0] = eps("web")
    await step.reconcile(WEB)
    assert queued == [Router(4096)]
    backend.fail_updates = False
    await step.reconcile(Router(4096))
    assert backend.calls[-1] == ("sync", (4096, False, [("10.244.240.11", "tcp", 80)]))


async def test_a_missing_router_namespace_is_retried_alone() -> None:
    step, backend, queued = lab(two_services(), present=set())
    await step.reconcile(FULL)
    assert backend.calls == [] and queued == [Router(4096)]


async def test_a_tenant_leaving_the_host_has_its_router_forgotten() -> None:
    cluster = two_services()
    step, backend, _ = lab(cluster)
    await step.reconcile(FULL)
    cluster.local.clear()
    await step.reconcile(Router(4096))
    assert backend.calls[-1] == ("forget", NETNS)
    await step.reconcile(HOST)
    assert step.programmed == {}
