"""Floating-IP rules from the Pi docs, and tenant isolation."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import FIP_BINDINGS, IPAM_ADDRESSES, IPAM_POOLS, NODE_PORTS, VNIS
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.platform import Platform, Tenant
from tests.network.test_api import pod


def lb(name: str, fip: str, *ports: int, protocol: int = meta_pb2.PROTOCOL_TCP) -> objects_pb2.Service:
    svc = objects_pb2.Service()
    svc.metadata.name = name
    svc.spec.type = objects_pb2.SERVICE_TYPE_LOAD_BALANCER
    svc.spec.load_balancer_ip = fip
    svc.spec.selector["app"] = name
    for i, port in enumerate(ports):
        svc.spec.ports.add(name=f"p{i}" if len(ports) > 1 else "", port=port, target_port=80, protocol=protocol)
    return svc


async def expect(code: grpc.StatusCode, call: object, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = err.value.details() or ""
    assert err.value.code() == code, details
    for word in words:
        assert word in details, details
    return details


async def fip(t: Tenant) -> str:
    return str((await t.call("AllocateFloatingIP", network_pb2.AllocateFloatingIPRequest())).address)


async def test_floating_ip_rules(platform: Platform, etcd: Etcd) -> None:
    t = await platform.tenant()
    address = await fip(t)
    listed = (await t.call("ListFloatingIPs", network_pb2.ListFloatingIPsRequest())).floating_ips
    assert [f.address for f in listed] == [address] and listed[0].allocated_at.seconds > 0
    a = await t.call("CreateService", network_pb2.CreateServiceRequest(service=lb("a", address, 8080)))
    assert a.status.load_balancer_ingress_ip == address and 30000 <= a.spec.ports[0].node_port <= 32767
    # Another service on another port of the same FIP: fine.
    await t.call("CreateService", network_pb2.CreateServiceRequest(service=lb("b", address, 8081)))
    # The same port: rejected, naming the service that has it.
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        t.call("CreateService", network_pb2.CreateServiceRequest(service=lb("c", address, 8080))),
        "default/a",
    )
    # Same number over UDP does not clash with TCP.
    await t.call(
        "CreateService",
        network_pb2.CreateServiceRequest(service=lb("d", address, 8080, protocol=meta_pb2.PROTOCOL_UDP)),
    )
    # A second FIP for one service: rejected.
    second = await fip(t)
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        t.call("UpdateService", network_pb2.UpdateServiceRequest(service=lb("a", second, 8080))),
        address,
        "at most one",
    )
    # Releasing a bound FIP: rejected, naming a service.
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        t.call("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=address)),
        "bound to service default/",
    )
    bound = await t.call("GetFloatingIP", network_pb2.GetFloatingIPRequest(address=address))
    assert list(bound.bound_services) == ["default/a", "default/b", "default/d"]
    # A FIP outlives its services; once unbound it can be released.
    for name in ("a", "b", "d"):
        await t.call("DeleteService", network_pb2.ObjectRef(name=name))
    assert await etcd.count_prefix(FIP_BINDINGS.scope_prefix(address)) == 0
    assert (await t.call("GetFloatingIP", network_pb2.GetFloatingIPRequest(address=address))).address == address
    for addr in (address, second):
        await t.call("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=addr))
    assert not (await t.call("ListFloatingIPs", network_pb2.ListFloatingIPsRequest())).floating_ips
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        t.call("CreateService", network_pb2.CreateServiceRequest(service=lb("e", address, 80))),
        "not one of your floating IPs",
    )


async def test_node_ports_are_shared_by_all_tenants(platform: Platform, etcd: Etcd) -> None:
    a, b = await platform.tenant(), await platform.tenant()
    svc = objects_pb2.Service()
    svc.metadata.name = "np"
    svc.spec.type = objects_pb2.SERVICE_TYPE_NODE_PORT
    svc.spec.selector["app"] = "np"
    svc.spec.ports.add(port=80, node_port=31999)
    await a.call("CreateService", network_pb2.CreateServiceRequest(service=svc))
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        b.call("CreateService", network_pb2.CreateServiceRequest(service=svc)),
        "nodePort",
        "31999",
    )
    svc.spec.ports[0].node_port = 0
    auto = await b.call("CreateService", network_pb2.CreateServiceRequest(service=svc))
    assert auto.spec.ports[0].node_port not in (0, 31999)
    await a.call("DeleteService", network_pb2.ObjectRef(name="np"))
    await b.call("DeleteService", network_pb2.ObjectRef(name="np"))
    assert await etcd.get(NODE_PORTS.key("tcp-31999")) is None


async def test_tenants_cannot_see_or_touch_each_other(platform: Platform, agents: FakeWiringAgents, etcd: Etcd) -> None:
    a, b = await platform.tenant(), await platform.tenant()
    address = await fip(a)
    await a.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("secret", {"app": "s"})))
    await a.call("CreateService", network_pb2.CreateServiceRequest(service=lb("s", address, 80)))
    ref = network_pb2.ObjectRef(name="secret")
    svc_ref = network_pb2.ObjectRef(name="s")
    # get, update, delete: NOT_FOUND, exactly as for a name that does not exist
    for method, request in (
        ("GetPod", ref), ("DeletePod", ref), ("GetService", svc_ref), ("DeleteService", svc_ref),
        ("GetEndpoints", svc_ref), ("GetFloatingIP", network_pb2.GetFloatingIPRequest(address=address)),
        ("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=address)),
    ):  # fmt: skip
        details = await expect(grpc.StatusCode.NOT_FOUND, b.call(method, request))
        assert a.name not in details
    stolen = objects_pb2.Pod()
    stolen.metadata.name = "secret"
    stolen.metadata.labels["x"] = "y"
    await expect(grpc.StatusCode.NOT_FOUND, b.call("UpdatePod", network_pb2.UpdatePodRequest(pod=stolen)))
    # list and watch show nothing of A
    assert not (await b.call("ListPods", network_pb2.ListPodsRequest())).pods
    assert not (await b.call("ListServices", network_pb2.ListServicesRequest())).services
    assert not (await b.call("ListFloatingIPs", network_pb2.ListFloatingIPsRequest())).floating_ips
    events = []
    async for ev in b.stub.WatchPods(meta_pb2.WatchOptions(), metadata=b.md, timeout=5):
        events.append(ev.type)
        if ev.type == meta_pb2.WATCH_EVENT_TYPE_BOOKMARK:
            break
    assert events == [meta_pb2.WATCH_EVENT_TYPE_BOOKMARK]
    # binding A's FIP
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        b.call("CreateService", network_pb2.CreateServiceRequest(service=lb("grab", address, 81))),
        "not one of your floating IPs",
    )
    # B may use the very same names and addresses for its own objects.
    mine = await b.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("secret")))
    assert mine.metadata.uid != (await a.call("GetPod", ref)).metadata.uid
    alloc = await etcd.get(IPAM_ADDRESSES.key(f"{a.name}.default.pod", mine.status.pod_ip))
    assert alloc is None or a.name not in alloc.value.decode(errors="replace"), "B's pod address is in B's pool"
    await asyncio.gather(a.call("DeleteService", svc_ref), a.call("DeletePod", ref), b.call("DeletePod", ref))
    await a.call("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=address))


async def test_deleting_a_tenant_takes_its_network_and_tokens(platform: Platform, etcd: Etcd) -> None:
    t = await platform.tenant()
    me = await t.call("WhoAmI", network_pb2.WhoAmIRequest())
    admin_md = (("authorization", f"Bearer {platform.admin_token}"),)
    address = await fip(t)
    await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod("p")))
    for blocker in ("pods", "floating IPs"):
        details = await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            platform.admin.DeleteTenant(network_pb2.DeleteTenantRequest(name=t.name), metadata=admin_md),
        )
        assert blocker in details
        if blocker == "pods":
            await t.call("DeletePod", network_pb2.ObjectRef(name="p"))
    await t.call("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=address))
    await platform.admin.DeleteTenant(network_pb2.DeleteTenantRequest(name=t.name), metadata=admin_md)
    assert await etcd.get(VNIS.key(str(me.tenant_info.network.vni))) is None
    assert await etcd.get(IPAM_POOLS.key(f"{t.name}.default.pod")) is None
    assert await etcd.get(IPAM_POOLS.key(f"{t.name}.default.svc")) is None
    await expect(grpc.StatusCode.UNAUTHENTICATED, t.call("WhoAmI", network_pb2.WhoAmIRequest()))
