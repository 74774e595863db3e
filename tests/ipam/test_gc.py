"""The garbage collector on a real etcd: node leases, moved pods, owners."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.api.network.v1 import objects_pb2
from pinet.devstack.etcd import EtcdServer
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import NODE_LEASES, PODS
from pinet.etcd.lease import Lease
from services.ipam.gc import Action, Facts, judge
from tests.helpers.procs import ServiceProcess
from tests.helpers.wait import eventually
from tests.ipam.conftest import ensure_network, pod_owner

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub as Stub

GC_FLAGS = ["--gc-interval", "0.5", "--node-grace", "2", "--owner-grace", "2", "--floating-ranges", ""]


async def put_pod(etcd: Etcd, tenant: str, name: str, uid: str, node: str) -> None:
    pod = objects_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = name, "default", uid
    pod.spec.node_name = node
    await etcd.put(PODS.key(tenant, "default", name), PODS.encode(pod))


async def node_heartbeat(etcd: Etcd, node: str) -> Lease:
    lease = await Lease(etcd, ttl=2).grant()
    await etcd.put(NODE_LEASES.key(node), NODE_LEASES.encode(objects_pb2.Node(name=node)), lease=lease.id)
    return lease


async def allocated(stub: Stub, pool: str) -> dict[str, ipam_pb2.Allocation]:
    resp = await stub.ListAllocations(ipam_pb2.ListAllocationsRequest(pool=pool))
    return {a.owner.handle: a for a in resp.allocations}


async def test_dead_nodes_pod_ips_return_after_grace_live_ones_never(
    make_etcd_server: Callable[[], EtcdServer],
) -> None:
    server = make_etcd_server()
    etcd = await server.client().connect()
    proc = await ServiceProcess("ipam", server.endpoint, GC_FLAGS).start()
    live = await node_heartbeat(etcd, "node-a")
    dying = await node_heartbeat(etcd, "node-b")
    try:
        async with proc.channel() as channel:
            stub: Stub = ipam_pb2_grpc.IpamServiceStub(channel)
            tenant = "acme"
            pool = (await ensure_network(stub, tenant)).pod_pool.pool.name
            placement = {"a1": "node-a", "a2": "node-a", "b1": "node-b", "b2": "node-b", "b3": "node-b"}
            for handle, node in placement.items():
                owner = pod_owner(tenant, handle, node=node, name=f"default/{handle}")
                await stub.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=owner))
                # b3's pod has since been rescheduled to node-a.
                await put_pod(etcd, tenant, handle, handle, "node-a" if handle == "b3" else node)
            before = await allocated(stub, pool)
            assert all(a.node_lease_alive for a in before.values())

            await dying.close(revoke=False)  # the host dies: no more keep-alives
            await eventually(lambda: _gone(etcd, "node-b"), timeout=10)
            lost_at = time.monotonic()
            still = await allocated(stub, pool)
            assert set(still) == set(placement), "nothing is reclaimed before the grace period"
            assert not still["b1"].node_lease_alive

            async def reclaimed() -> bool:
                return set(await allocated(stub, pool)) == {"a1", "a2", "b3"}

            await eventually(reclaimed, timeout=10)
            assert time.monotonic() - lost_at >= 1.5, "the grace period was honoured"
            after = await allocated(stub, pool)
            assert after["b3"].owner.node == "node-a" and after["b3"].address == before["b3"].address
            assert after["a1"].address == before["a1"].address
            await asyncio.sleep(3)  # a live node's addresses never come back
            assert set(await allocated(stub, pool)) == {"a1", "a2", "b3"}
    finally:
        await live.close()
        await proc.terminate()
        await etcd.close()


async def _gone(etcd: Etcd, node: str) -> bool:
    return await etcd.get(NODE_LEASES.key(node)) is None


async def test_owners_being_created_are_not_collected(make_etcd_server: Callable[[], EtcdServer]) -> None:
    server = make_etcd_server()
    etcd = await server.client().connect()
    proc = await ServiceProcess("ipam", server.endpoint, GC_FLAGS).start()
    try:
        async with proc.channel() as channel:
            stub: Stub = ipam_pb2_grpc.IpamServiceStub(channel)
            tenant = "acme"
            pool = (await ensure_network(stub, tenant)).pod_pool.pool.name
            for handle in ("slow-pod", "orphan"):
                owner = pod_owner(tenant, handle, name=f"default/{handle}")
                await stub.Allocate(ipam_pb2.AllocateRequest(pool=pool, owner=owner))
            await asyncio.sleep(1)
            assert set(await allocated(stub, pool)) == {"slow-pod", "orphan"}, "young owners get time"
            await put_pod(etcd, tenant, "slow-pod", "slow-pod", "")

            async def orphan_freed() -> bool:
                return set(await allocated(stub, pool)) == {"slow-pod"}

            await eventually(orphan_freed, timeout=10)
            # A pod recreated under the same name with a new uid is another owner.
            await put_pod(etcd, tenant, "slow-pod", "another-uid", "")

            async def all_freed() -> bool:
                return not await allocated(stub, pool)

            await eventually(all_freed, timeout=10)
    finally:
        await proc.terminate()
        await etcd.close()


def test_judge_table() -> None:
    pod = ipam_pb2.Allocation(owner=pod_owner("t", "u", node="n1", name="default/p"))
    svc = ipam_pb2.Allocation(
        owner=ipam_pb2.Owner(tenant="t", kind=ipam_pb2.OWNER_KIND_SERVICE, handle="s", name="default/web")
    )
    cases = [
        (pod, Facts(5, 100.0, False), Action.KEEP),  # young
        (pod, Facts(100, None, True), Action.KEEP),  # live node, pod exists
        (pod, Facts(100, None, False), Action.RELEASE),  # live node, pod gone
        (pod, Facts(100, 10.0, True, "n1", False), Action.KEEP),  # node lost, within grace
        (pod, Facts(100, 40.0, True, "n1", False), Action.RELEASE),  # node lost, pod still on it
        (pod, Facts(100, 40.0, True, "n2", True), Action.MOVE),  # pod moved to a live node
        (pod, Facts(100, 40.0, True, "n2", False), Action.RELEASE),  # moved to a dead node
        (svc, Facts(100, None, True), Action.KEEP),
        (svc, Facts(100, None, False), Action.RELEASE),
        (svc, Facts(100, None, None), Action.KEEP),  # cannot judge: keep
    ]
    for alloc, facts, expected in cases:
        assert judge(alloc, facts, owner_grace=30, node_grace=30).action is expected, (alloc.owner.handle, facts)
