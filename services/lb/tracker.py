"""The lb's change tracking (pure): informer events in, the reconcile keys
they make due out, with the few indexes that decision needs.

Only what an event can change is made due: a ClusterIP Service's change is
its own Service's virtual services (on this host only while the tenant has
pods here), a node-port or floating-IP change also the host's forwarding,
a local pod becoming ready or going its tenant's router, a node joining or
leaving (or moving its underlay address) a full pass.
"""

from __future__ import annotations

from collections.abc import Callable

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.informer import Event, EventType
from pinet.etcd.keyspace import ENDPOINTS, SERVICES
from pinet.runtime.reconcile import FULL
from services.lb.keys import HOST, LbKey, Router, ServiceRef
from services.lb.model import NODE_PORT_TYPES


class ChangeTracker:
    """node: this host; vni_of: a tenant's VNI (None while unknown);
    service: the Service a reference names, as the informer holds it."""

    def __init__(
        self,
        node: str,
        vni_of: Callable[[str], int | None],
        service: Callable[[ServiceRef], objects_pb2.Service | None],
    ) -> None:
        self.node = node
        self.vni_of = vni_of
        self.service = service
        self.by_tenant: dict[str, dict[bytes, objects_pb2.Service]] = {}
        self.local_pods: dict[str, set[str]] = {}  # tenant -> uids of its network-ready pods here
        self.binding_of: dict[ServiceRef, objects_pb2.FloatingIPBinding] = {}

    def _touch(self, ref: ServiceRef, host: bool) -> list[LbKey]:
        keys: list[LbKey] = [ref] if ref.tenant in self.local_pods else []
        return [*keys, HOST] if host else keys

    def on_service(self, event: Event[objects_pb2.Service]) -> list[LbKey]:
        ref = ServiceRef(*SERVICES.parts(event.key))
        bucket = self.by_tenant.setdefault(ref.tenant, {})
        if event.type is EventType.DELETED:
            bucket.pop(event.key, None)
            if not bucket:
                del self.by_tenant[ref.tenant]
        else:
            bucket[event.key] = event.obj
        external = event.obj.spec.type in NODE_PORT_TYPES or (
            event.old is not None and event.old.spec.type in NODE_PORT_TYPES
        )
        return self._touch(ref, host=external)

    def on_endpoints(self, event: Event[objects_pb2.Endpoints]) -> list[LbKey]:
        ref = ServiceRef(*ENDPOINTS.parts(event.key))
        svc = self.service(ref)
        return self._touch(ref, host=svc is not None and svc.spec.type in NODE_PORT_TYPES)

    def on_binding(self, event: Event[objects_pb2.FloatingIPBinding]) -> list[LbKey]:
        keys: list[LbKey] = []
        ref = _bound(event.obj)
        if event.old is not None and (old := _bound(event.old)) != ref:  # moved to another Service
            self.binding_of.pop(old, None)
            keys += self._touch(old, host=True)
        if event.type is EventType.DELETED:
            self.binding_of.pop(ref, None)
        else:
            self.binding_of[ref] = event.obj
        return keys + self._touch(ref, host=True)

    def on_pod(self, event: Event[objects_pb2.Pod]) -> list[LbKey]:
        pod = event.obj
        if pod.spec.node_name != self.node:
            return []
        tenant, uid = pod.metadata.tenant, pod.metadata.uid
        # Network-ready: the netagent has made the tenant's router by then, so
        # the lb programs it at once instead of retrying until it exists.
        wired = event.type is not EventType.DELETED and pod.status.network_ready and bool(pod.status.pod_ip)
        wired = wired and not pod.metadata.HasField("deletion_timestamp")
        pods = self.local_pods.setdefault(tenant, set())
        if wired == (uid in pods):
            if not pods:
                del self.local_pods[tenant]
            return []
        if wired:
            pods.add(uid)
        else:
            pods.discard(uid)
        if not pods:
            del self.local_pods[tenant]
        vni = self.vni_of(tenant)
        return [Router(vni), HOST] if vni is not None else [HOST]

    def on_lease(self, event: Event[objects_pb2.Node]) -> list[LbKey]:
        """A node became ready or went (a renewal changes nothing)."""
        return [FULL] if event.old is None or event.type is EventType.DELETED else []

    def on_node(self, event: Event[objects_pb2.Node]) -> list[LbKey]:
        return [FULL] if event.old is None or event.old.underlay_ip != event.obj.underlay_ip else []

    def on_tenant(self, event: Event[objects_pb2.Tenant]) -> list[LbKey]:
        return [FULL]

    def services_of(self, tenant: str | None) -> list[objects_pb2.Service]:
        """Every Service (tenant None) or one tenant's."""
        if tenant is not None:
            return list(self.by_tenant.get(tenant, {}).values())
        return [s for bucket in self.by_tenant.values() for s in bucket.values()]

    def bindings_of(self, tenant: str) -> list[objects_pb2.FloatingIPBinding]:
        return [b for ref, b in self.binding_of.items() if ref.tenant == tenant]


def _bound(binding: objects_pb2.FloatingIPBinding) -> ServiceRef:
    return ServiceRef(binding.tenant, binding.namespace, binding.service)
