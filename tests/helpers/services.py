"""Services as the traffic tests make them, and who answers them."""

from __future__ import annotations

import asyncio
from collections import Counter

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.hostnet.netns import list_netns
from tests.helpers.cloud import Cloud
from tests.helpers.platform import Tenant
from tests.helpers.traffic import many


def service(
    name: str,
    selector: dict[str, str],
    ports: list[tuple[int, int]],
    kind: objects_pb2.ServiceType.ValueType = objects_pb2.SERVICE_TYPE_CLUSTER_IP,
    cluster_ip: str = "",
    affinity: bool = False,
    fip: str = "",
    protocol: meta_pb2.Protocol.ValueType = meta_pb2.PROTOCOL_TCP,
) -> network_pb2.CreateServiceRequest:
    svc = objects_pb2.Service()
    svc.metadata.name = name
    svc.spec.type = kind
    svc.spec.cluster_ip = cluster_ip
    svc.spec.selector.update(selector)
    for i, (port, target) in enumerate(ports):
        svc.spec.ports.add(name=f"p{i}", port=port, target_port=target, protocol=protocol)
    if affinity:
        svc.spec.session_affinity = objects_pb2.SESSION_AFFINITY_CLIENT_IP
        svc.spec.session_affinity_timeout_seconds = 60
    svc.spec.load_balancer_ip = fip
    return network_pb2.CreateServiceRequest(service=svc)


async def answers(cloud: Cloud, netns: str, ip: str, port: int, count: int, timeout: float = 2) -> Counter[str]:
    """Who answered count connections (the first word of each reply)."""
    return Counter(await asyncio.to_thread(many, netns, ip, port, count, timeout))


async def reachable(cloud: Cloud, netns: str, ip: str, port: int, timeout: float = 1) -> bool:
    return "FAILED" not in await answers(cloud, netns, ip, port, 1, timeout)


async def silent(cloud: Cloud, netns: str, ip: str, port: int) -> bool:
    return not await reachable(cloud, netns, ip, port)


def kernel_state(cloud: Cloud, n: int) -> str:
    """Host n's and its routers' nftables, for failure messages."""
    out = []
    for netns in sorted(list_netns()):
        if netns == cloud.hosts.host(n) or netns.startswith(cloud.hosts.host(n) + "-r"):
            out.append(f"--- {netns}\n" + cloud.hosts.exec(netns, "nft", "list", "ruleset").stdout)
            out.append(cloud.hosts.exec(netns, "ip", "route").stdout)
    return "\n".join(out)


async def ready_endpoints(t: Tenant, name: str) -> int:
    try:
        eps = await t.call("GetEndpoints", network_pb2.ObjectRef(name=name))
    except Exception:
        return 0
    return sum(1 for e in eps.endpoints if e.ready)
