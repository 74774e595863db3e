"""What the network service's handlers and controllers share."""

from __future__ import annotations

from dataclasses import dataclass

from pinet.etcd.client import Etcd
from services.ipam.pools import pod_pool_name, service_pool_name
from services.network.auth import TokenStore
from services.network.informers import ClusterView
from services.network.ipam_client import IpamClient
from services.network.tenants import Tenants

DEFAULT_PAGE = 500
MAX_PAGE = 5000


@dataclass
class Deps:
    etcd: Etcd
    view: ClusterView
    ipam: IpamClient
    tenants: Tenants
    tokens: TokenStore


def pod_pool(tenant: str) -> str:
    return pod_pool_name(tenant)


def service_pool(tenant: str) -> str:
    return service_pool_name(tenant)


def namespace(value: str) -> str:
    return value or "default"
