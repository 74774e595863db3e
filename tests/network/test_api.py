"""The network API over real gRPC: pods, scheduling, services, endpoints,
deployments, watches."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.cli import manifests
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import ENDPOINTS
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.platform import Platform, Tenant


def pod(
    name: str, labels: dict[str, str] | None = None, node: str = "", ports: list[tuple[str, int]] | None = None
) -> objects_pb2.Pod:
    p = objects_pb2.Pod()
    p.metadata.name = name
    p.metadata.labels.update(labels or {})
    p.spec.node_name = node
    c = p.spec.containers.add(name="main", image="nginx")
    for port_name, number in ports or []:
        c.ports.add(name=port_name, container_port=number)
    return p


def service_from_yaml(text: str) -> objects_pb2.Service:
    obj = manifests.load_all(text, "test")[0].obj
    assert isinstance(obj, objects_pb2.Service)
    return obj


async def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def endpoint_ips(t: Tenant, name: str) -> list[str]:
    ep = await t.call("GetEndpoints", network_pb2.ObjectRef(name=name))
    return [e.ip for e in ep.endpoints]


async def test_whoami_creates_the_tenant_network(platform: Platform) -> None:
    t = await platform.tenant()
    me = await t.call("WhoAmI", network_pb2.WhoAmIRequest())
    net = me.tenant_info.network
    assert me.tenant == t.name and not me.admin
    assert (net.cidr, net.service_cidr, net.gateway, net.dns_ip) == (
        "10.244.0.0/16",
        "10.244.240.0/20",
        "10.244.0.1",
        "10.244.0.2",
    )
    assert net.vni >= 4096
    other = await platform.tenant()
    assert (await other.call("WhoAmI", network_pb2.WhoAmIRequest())).tenant_info.network.vni != net.vni


async def test_unauthenticated_calls_are_refused(platform: Platform) -> None:
    t = await platform.tenant()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await t.stub.ListPods(network_pb2.ListPodsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await t.stub.ListPods(network_pb2.ListPodsRequest(), metadata=(("authorization", "Bearer pinet_nope"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await platform.admin.ListTenants(network_pb2.ListTenantsRequest(), metadata=t.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_pods_are_scheduled_get_a_stable_ip_and_become_ready(
    platform: Platform, agents: FakeWiringAgents, etcd: Etcd
) -> None:
    t = await platform.tenant()
    nodes = sorted(agents.registrations)
    created = [await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod(f"p{i}"))) for i in range(4)]
    placed = sorted(p.spec.node_name for p in created)
    assert placed == sorted(nodes * 2), "fewest pods wins: two on each node"
    pinned = await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("pinned", node=nodes[0])))
    assert pinned.spec.node_name == nodes[0]
    for p in created:
        assert p.status.pod_ip.startswith("10.244.") and p.status.phase == objects_pb2.POD_PHASE_PENDING

    async def all_ready() -> bool:
        pods = (await t.call("ListPods", network_pb2.ListPodsRequest())).pods
        return len(pods) == 5 and all(p.status.ready for p in pods)

    await wait_for(all_ready)
    again = await t.call("GetPod", network_pb2.ObjectRef(name="p0"))
    assert again.status.pod_ip == created[0].status.pod_ip and again.status.phase == objects_pb2.POD_PHASE_RUNNING
    # Relabelling keeps the address.
    again.metadata.labels["tier"] = "web"
    updated = await t.call("UpdatePod", network_pb2.UpdatePodRequest(pod=again))
    assert updated.status.pod_ip == created[0].status.pod_ip and updated.metadata.labels["tier"] == "web"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("p0")))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("x", node="no-such-node")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.nodeName" in (err.value.details() or "")
    for i in range(4):
        await t.call("DeletePod", network_pb2.ObjectRef(name=f"p{i}"))
    await t.call("DeletePod", network_pb2.ObjectRef(name="pinned"))
    assert not (await t.call("ListPods", network_pb2.ListPodsRequest())).pods


async def test_services_endpoints_follow_pods(platform: Platform, agents: FakeWiringAgents, etcd: Etcd) -> None:
    t = await platform.tenant()
    svc = await t.call(
        "CreateService",
        network_pb2.CreateServiceRequest(
            service=service_from_yaml("""
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: metrics, port: 9100}]
""")
        ),
    )
    assert svc.spec.cluster_ip.startswith("10.244.24") or svc.spec.cluster_ip.startswith("10.244.25")
    assert svc.spec.type == objects_pb2.SERVICE_TYPE_CLUSTER_IP
    a = await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("a", {"app": "web"}, ports=[("http", 8080)])))
    b = await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("b", {"app": "web"})))
    await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("c", {"app": "db"})))

    async def both() -> bool:
        return sorted(await endpoint_ips(t, "web")) == sorted([a.status.pod_ip, b.status.pod_ip])

    await wait_for(both)
    ep = await t.call("GetEndpoints", network_pb2.ObjectRef(name="web"))
    by_ip = {e.ip: {p.name: p.port for p in e.ports} for e in ep.endpoints}
    assert by_ip[a.status.pod_ip] == {"http": 8080, "metrics": 9100}
    assert by_ip[b.status.pod_ip] == {"metrics": 9100}, "a named target port the pod lacks is left out"
    # Relabel b away: it leaves the endpoints.
    b_now = await t.call("GetPod", network_pb2.ObjectRef(name="b"))
    b_now.metadata.labels["app"] = "other"
    await t.call("UpdatePod", network_pb2.UpdatePodRequest(pod=b_now))
    await wait_for(lambda: _eq(endpoint_ips(t, "web"), [a.status.pod_ip]))
    await t.call("DeletePod", network_pb2.ObjectRef(name="a"))
    await wait_for(lambda: _eq(endpoint_ips(t, "web"), []))
    await t.call("DeleteService", network_pb2.ObjectRef(name="web"))
    await wait_for(lambda: _absent(etcd, ENDPOINTS.key(t.name, "default", "web")))


async def _eq(coro: Any, expected: list[str]) -> bool:
    return sorted(await coro) == sorted(expected)


async def _absent(etcd: Etcd, key: bytes) -> bool:
    return await etcd.get(key) is None


async def test_deployment_scales_2_5_0_and_node_loss_empties_endpoints(
    platform: Platform, agents: FakeWiringAgents
) -> None:
    t = await platform.tenant()
    dep = manifests.load_all(
        """
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: main, image: nginx, ports: [{containerPort: 80}]}]}
""",
        "test",
    )[0].obj
    await t.call("CreateService", network_pb2.CreateServiceRequest(service=service_from_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {selector: {app: api}, ports: [{port: 80}]}\n"
    )))  # fmt: skip
    assert isinstance(dep, objects_pb2.Deployment)
    await t.call("CreateDeployment", network_pb2.CreateDeploymentRequest(deployment=dep))
    for replicas in (2, 5, 0, 3):
        if replicas != 2:
            await t.call(
                "ScaleDeployment",
                network_pb2.ScaleDeploymentRequest(ref=network_pb2.ObjectRef(name="api"), replicas=replicas),
            )

        async def settled(n: int = replicas) -> bool:
            pods = (await t.call("ListPods", network_pb2.ListPodsRequest())).pods
            ready_ips = sorted(p.status.pod_ip for p in pods if p.status.ready)
            return len(pods) == n and len(ready_ips) == n and sorted(await endpoint_ips(t, "api")) == ready_ips

        await wait_for(settled, 20)
    d = await t.call("GetDeployment", network_pb2.ObjectRef(name="api"))
    assert (d.status.replicas, d.status.ready_replicas) == (3, 3)
    # A node dies: its pods leave the endpoints (the deployment keeps them: pinet does not reschedule).
    pods = (await t.call("ListPods", network_pb2.ListPodsRequest())).pods
    victim = pods[0].spec.node_name
    survivors = sorted(p.status.pod_ip for p in pods if p.spec.node_name != victim)
    await agents.kill_node(victim)
    await wait_for(lambda: _eq(endpoint_ips(t, "api"), survivors), 15)
    node = await t.call("GetNode", network_pb2.GetNodeRequest(name=victim))
    assert not node.ready
    await t.call("DeleteDeployment", network_pb2.ObjectRef(name="api"))
    await wait_for(lambda: _no_pods(t), 15)


async def _no_pods(t: Tenant) -> bool:
    return not (await t.call("ListPods", network_pb2.ListPodsRequest())).pods


async def test_watch_pods_from_a_resource_version(platform: Platform, agents: FakeWiringAgents) -> None:
    t = await platform.tenant()
    listed = await t.call("ListPods", network_pb2.ListPodsRequest())
    seen: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def watcher() -> None:
        call = t.stub.WatchPods(
            meta_pb2.WatchOptions(resource_version=listed.list_meta.resource_version, label_selector="app=w"),
            metadata=t.md,
        )
        async for ev in call:
            if ev.type != meta_pb2.WATCH_EVENT_TYPE_BOOKMARK:
                seen.append((ev.type, ev.pod.metadata.name))
            if (meta_pb2.WATCH_EVENT_TYPE_DELETED, "w1") in seen:
                done.set()
                call.cancel()

    task = asyncio.create_task(watcher())
    await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("w1", {"app": "w"})))
    await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("other", {"app": "x"})))
    await t.call("DeletePod", network_pb2.ObjectRef(name="w1"))
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    assert seen[0] == (meta_pb2.WATCH_EVENT_TYPE_ADDED, "w1")
    assert seen[-1] == (meta_pb2.WATCH_EVENT_TYPE_DELETED, "w1")
    assert all(name == "w1" for _, name in seen), "the label selector filters the stream"
    await t.call("DeletePod", network_pb2.ObjectRef(name="other"))


async def test_watch_from_a_compacted_version_is_out_of_range(platform: Platform, etcd: Etcd) -> None:
    t = await platform.tenant()
    old = (await t.call("ListPods", network_pb2.ListPodsRequest())).list_meta.resource_version
    for i in range(3):
        await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod(f"c{i}")))
    await etcd.compact(await etcd.current_revision())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in t.stub.WatchPods(meta_pb2.WatchOptions(resource_version=old), metadata=t.md, timeout=10):
            pass
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "list again" in (err.value.details() or "")
    # Listing again and watching from the list's version works.
    fresh = (await t.call("ListPods", network_pb2.ListPodsRequest())).list_meta.resource_version
    call = t.stub.WatchPods(meta_pb2.WatchOptions(resource_version=fresh), metadata=t.md, timeout=10)
    await t.call("DeletePod", network_pb2.ObjectRef(name="c0"))
    async for ev in call:
        if ev.type == meta_pb2.WATCH_EVENT_TYPE_DELETED:
            assert ev.pod.metadata.name == "c0"
            break
    call.cancel()
    for i in (1, 2):
        await t.call("DeletePod", network_pb2.ObjectRef(name=f"c{i}"))
