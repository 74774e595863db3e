"""What the network service's handlers and controllers share."""

from __future__ import annotations

from dataclasses import dataclass

from pinet.api.common.v1 import meta_pb2
from pinet.etcd.client import Etcd
from pinet.runtime.errors import invalid
from services.ipam.pools import pod_pool_name, service_pool_name
from services.network.auth import TokenStore
from services.network.ipam_client import IpamClient
from services.network.tenants import Tenants
from services.network.view import ClusterView

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


def page_size(options: meta_pb2.ListOptions) -> int:
    if options.page_size < 0:
        raise invalid("options.page_size: must not be negative")
    return min(options.page_size or DEFAULT_PAGE, MAX_PAGE)


def namespace(value: str) -> str:
    return value or "default"
