"""What the dns follows in etcd, and how each change reaches its view:
Services, Endpoints and pods per tenant (view.py), tenants for their DNS
addresses and router VNIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, InformerSet
from pinet.etcd.keyspace import ENDPOINTS, PODS, SERVICES, TENANTS, Kind
from services.dns.view import View

M = TypeVar("M", bound=Message)


def _by_name(
    kind: Kind[M], put: Callable[[str, M], None], delete: Callable[[str, str, str], None]
) -> Callable[[Event[M]], None]:
    """A handler keeping the view's copy of one namespaced, named kind."""

    def handle(event: Event[M]) -> None:
        tenant, namespace, name = kind.parts(event.key)
        if event.type is EventType.DELETED:
            delete(tenant, namespace, name)
        else:
            put(tenant, event.obj)

    return handle


class ClusterFeed:
    def __init__(self, etcd: Etcd, view: View) -> None:
        self.view = view
        self.informers = InformerSet(etcd, "dns")
        self.tenants = self.informers.follow(TENANTS)
        self.services = self.informers.follow(SERVICES)
        self.endpoints = self.informers.follow(ENDPOINTS)
        self.pods = self.informers.follow(PODS)
        self.services.subscribe(_by_name(SERVICES, view.put_service, view.delete_service))
        self.endpoints.subscribe(_by_name(ENDPOINTS, view.put_endpoints, view.delete_endpoints))
        self.pods.subscribe(self._on_pod)

    def dns_ip(self, tenant: str) -> str:
        t = self.tenants.get(TENANTS.key(tenant))
        return t.network.dns_ip if t is not None else ""

    def tenant_of_vni(self, vni: int) -> tuple[str, str] | None:
        """(tenant, its DNS address) of the router with that VNI."""
        for tenant in self.tenants.values():
            if tenant.network.vni == vni:
                return tenant.name, tenant.network.dns_ip
        return None

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        tenant = PODS.parts(event.key)[0]
        if event.type is EventType.DELETED:
            self.view.delete_pod(tenant, event.obj)
        else:
            self.view.put_pod(tenant, event.obj, event.old)
