"""Controllers run by the elected network replica: endpoints, deployments,
and the copy of each agent's report into its pod's status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.informer import Event, EventType
from pinet.etcd.keyspace import DEPLOYMENTS, ENDPOINTS, NODE_LEASES, POD_NETWORK, PODS, SERVICES
from pinet.objects.meta import now
from pinet.objects.podnetwork import needs_copy, set_network_ready
from pinet.objects.store import update
from pinet.runtime.errors import ApiError
from pinet.runtime.reconcile import Reconciler
from services.network import endpoints, pods_api
from services.network.deps import Deps
from services.network.selectors import map_matches

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # tenant, namespace, name


class EndpointsController:
    """Keeps one Endpoints object per service: the ready pods its selector
    matches, with their resolved target ports."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.view = deps.view
        self.reconciler: Reconciler[Key] = Reconciler("endpoints", self.reconcile)

    def subscribe(self) -> list[Callable[[], None]]:
        return [
            self.view.services.subscribe(self._on_service),
            self.view.pods.subscribe(self._on_pod, replay=False),
            self.view.node_leases.subscribe(self._on_node, replay=False),
            self.view.endpoints.subscribe(self._on_endpoints),
        ]

    def _on_service(self, event: Event[objects_pb2.Service]) -> None:
        self.reconciler.enqueue(SERVICES.parts(event.key))  # type: ignore[arg-type]

    def _on_endpoints(self, event: Event[objects_pb2.Endpoints]) -> None:
        # Catches endpoints whose service is gone, and repairs edits by hand.
        self.reconciler.enqueue(ENDPOINTS.parts(event.key))  # type: ignore[arg-type]

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        tenant, ns, _ = PODS.parts(event.key)
        for name, svc in self.view.services_by_scope.get((tenant, ns), {}).items():
            selector = svc.spec.selector
            if map_matches(selector, event.obj.metadata.labels) or (
                event.old is not None and map_matches(selector, event.old.metadata.labels)
            ):
                self.reconciler.enqueue((tenant, ns, name))

    def _on_node(self, event: Event[objects_pb2.Node]) -> None:
        node = NODE_LEASES.parts(event.key)[0]
        for (tenant, ns), pods in list(self.view.pods_by_scope.items()):
            if any(p.spec.node_name == node for p in pods.values()):
                for name in self.view.services_by_scope.get((tenant, ns), {}):
                    self.reconciler.enqueue((tenant, ns, name))

    async def reconcile(self, key: Key) -> None:
        tenant, ns, name = key
        ep_key = ENDPOINTS.key(tenant, ns, name)
        svc = self.view.services.get(SERVICES.key(tenant, ns, name))
        current = self.view.endpoints.item(ep_key)
        if svc is None:
            if current is not None:
                await self.deps.etcd.delete_if(ep_key, current.mod_revision)
            return
        wanted = endpoints.compute(svc, self.view.pods_by_scope.get((tenant, ns), {}).values(), self.view.node_ready)
        if current is not None and list(current.obj.endpoints) == wanted:
            return
        obj = objects_pb2.Endpoints(endpoints=wanted)
        obj.metadata.name, obj.metadata.namespace, obj.metadata.tenant = name, ns, tenant
        obj.metadata.uid = svc.metadata.uid
        obj.metadata.labels.update(svc.metadata.labels)
        obj.metadata.creation_timestamp.CopyFrom(
            current.obj.metadata.creation_timestamp if current is not None else now()
        )
        value = ENDPOINTS.encode(obj)
        if current is None:
            revision = await self.deps.etcd.create(ep_key, value)
        else:
            revision = await self.deps.etcd.update(ep_key, value, current.mod_revision)
        if revision is None:
            raise RuntimeError("endpoints changed under us")
        await self.view.endpoints.wait_revision(revision, timeout=10)

    def enqueue_all(self) -> None:
        for key in self.view.services:
            self.reconciler.enqueue(SERVICES.parts(key))  # type: ignore[arg-type]
        for key in self.view.endpoints:
            self.reconciler.enqueue(ENDPOINTS.parts(key))  # type: ignore[arg-type]


class DeploymentController:
    """Keeps spec.replicas pods of every deployment."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.view = deps.view
        self.reconciler: Reconciler[Key] = Reconciler("deployments", self.reconcile)

    def subscribe(self) -> list[Callable[[], None]]:
        return [
            self.view.deployments.subscribe(self._on_deployment),
            self.view.pods.subscribe(self._on_pod, replay=False),
            self.view.node_leases.subscribe(lambda _: self.enqueue_all(), replay=False),
        ]

    def _on_deployment(self, event: Event[objects_pb2.Deployment]) -> None:
        self.reconciler.enqueue(DEPLOYMENTS.parts(event.key))  # type: ignore[arg-type]

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        owner = event.obj.metadata.annotations.get(pods_api.CREATED_BY)
        if owner:
            tenant, ns, _ = PODS.parts(event.key)
            self.reconciler.enqueue((tenant, ns, owner.partition("/")[0]))

    def enqueue_all(self) -> None:
        for key in self.view.deployments:
            self.reconciler.enqueue(DEPLOYMENTS.parts(key))  # type: ignore[arg-type]

    async def reconcile(self, key: Key) -> None:
        tenant, ns, name = key
        deployment = self.view.deployments.get(DEPLOYMENTS.key(tenant, ns, name))
        scope = list(self.view.pods_by_scope.get((tenant, ns), {}).values())
        marker = f"{name}/{deployment.metadata.uid}" if deployment is not None else None
        mine = [p for p in scope if p.metadata.annotations.get(pods_api.CREATED_BY) == marker]
        orphans = [
            p for p in scope
            if p.metadata.annotations.get(pods_api.CREATED_BY, "").partition("/")[0] == name and p not in mine
        ]  # fmt: skip
        for pod in orphans:
            with contextlib.suppress(ApiError):
                await pods_api.delete_pod(self.deps, tenant, ns, pod.metadata.name)
        if deployment is None:
            return
        missing = deployment.spec.replicas - len(mine)
        for _ in range(max(missing, 0)):
            await pods_api.create_pod(self.deps, tenant, pods_api.pod_from_template(deployment))
        if missing < 0:
            # Remove pods that are not ready first, then the newest.
            victims = sorted(
                mine,
                key=lambda p: (
                    endpoints.pod_ready(p, self.view.node_ready),
                    -p.metadata.creation_timestamp.ToNanoseconds(),
                ),
            )[:-missing]
            for pod in victims:
                with contextlib.suppress(ApiError):
                    await pods_api.delete_pod(self.deps, tenant, ns, pod.metadata.name)
        await self._update_status(tenant, ns, name)

    async def _update_status(self, tenant: str, ns: str, name: str) -> None:
        deployment = self.view.deployments.get(DEPLOYMENTS.key(tenant, ns, name))
        if deployment is None:
            return
        marker = f"{name}/{deployment.metadata.uid}"
        mine = [
            p for p in self.view.pods_by_scope.get((tenant, ns), {}).values()
            if p.metadata.annotations.get(pods_api.CREATED_BY) == marker
        ]  # fmt: skip
        status = objects_pb2.DeploymentStatus(
            replicas=len(mine), ready_replicas=sum(endpoints.pod_ready(p, self.view.node_ready) for p in mine)
        )
        if status == deployment.status:
            return

        def mutate(d: objects_pb2.Deployment) -> bool:
            if d.status == status:
                return False
            d.status.CopyFrom(status)
            return True

        await update(self.deps.etcd, DEPLOYMENTS, DEPLOYMENTS.key(tenant, ns, name), mutate)


class PodNetworkController:
    """Copies what a node's agent reports of a pod into the pod's status,
    only for a pod that is on that node: an agent can speak only for its
    own node's pods."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.view = deps.view
        self.reconciler: Reconciler[tuple[str, str]] = Reconciler("pod-network", self.reconcile)

    def subscribe(self) -> list[Callable[[], None]]:
        return [
            self.view.pod_network.subscribe(self._on_report, replay=False),
            self.view.pods.subscribe(self._on_pod, replay=False),
        ]

    def _on_report(self, event: Event[objects_pb2.Pod]) -> None:
        if event.type is not EventType.DELETED:
            self.reconciler.enqueue(POD_NETWORK.parts(event.key))  # type: ignore[arg-type]

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        # A pod written without its report's state (created after it, or
        # its status rewritten) gets it again.
        pod = event.obj
        if event.type is not EventType.DELETED and pod.spec.node_name:
            key = POD_NETWORK.key(pod.spec.node_name, pod.metadata.uid)
            report = self.view.pod_network.get(key)
            if report is not None and needs_copy(pod, report):
                self.reconciler.enqueue((pod.spec.node_name, pod.metadata.uid))

    def enqueue_all(self) -> None:
        for key in self.view.pod_network:
            self.reconciler.enqueue(POD_NETWORK.parts(key))  # type: ignore[arg-type]

    async def reconcile(self, key: tuple[str, str]) -> None:
        node, uid = key
        report = self.view.pod_network.get(POD_NETWORK.key(node, uid))
        if report is None:
            return
        m = report.metadata
        pod = self.view.pods.get(PODS.key(m.tenant, m.namespace, m.name))
        if pod is None or pod.metadata.uid != uid or pod.spec.node_name != node or not needs_copy(pod, report):
            return
        s = report.status
        await set_network_ready(self.deps.etcd, m.tenant, m.namespace, m.name, uid, s.network_ready, s.netns, s.message)


async def run_controllers(deps: Deps) -> None:
    """The elected replica's work: the controllers until cancelled."""
    controllers = (EndpointsController(deps), DeploymentController(deps), PodNetworkController(deps))
    unsubscribe: list[Callable[[], None]] = []
    tasks = []
    try:
        for c in controllers:
            unsubscribe += c.subscribe()
            c.enqueue_all()
            tasks.append(asyncio.create_task(c.reconciler.run(), name=f"controller:{c.reconciler.name}"))
        log.info("endpoints, deployment and pod-network controllers running")
        await asyncio.gather(*tasks)
    finally:
        for stop in unsubscribe:
            stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
