"""Load balancing with real traffic through the nftables backend: three
simulated hosts, pods that answer with their name, clients in pods, in
other hosts and on the simulated internet."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from pinet.api.common.v1 import meta_pb2
from pinet.api.lb.v1 import lb_pb2, lb_pb2_grpc
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.devstack.hosts import INTERNET_IP
from pinet.hostnet import names
from tests.helpers.cloud import Cloud
from tests.helpers.platform import Tenant
from tests.helpers.services import answers, kernel_state, reachable, ready_endpoints, service, silent
from tests.helpers.traffic import CHATTER, ECHO, UDP_ASKER, UDP_SERVER, connect, serve
from tests.helpers.wait import eventually


async def web_pods(cloud: Cloud, t: Tenant, app: str, hosts: list[int]) -> list[objects_pb2.Pod]:
    pods = []
    for i, n in enumerate(hosts):
        pods.append(await cloud.run_pod(t, f"{app}-{i}", cloud.hosts.host(n), {"app": app}))
    return pods


def start_servers(cloud: Cloud, pods: list[objects_pb2.Pod], port: int) -> list[subprocess.Popen[bytes]]:
    return [serve(cloud.pod_netns(p), port, p.metadata.name) for p in pods]


async def delete_pods(t: Tenant, *names: str) -> None:
    for name in names:
        await t.call("DeletePod", network_pb2.ObjectRef(name=name))


async def test_cluster_ip_reaches_every_endpoint_hairpins_and_follows_scale_down(lbcloud: Cloud) -> None:
    cloud = lbcloud
    t = await cloud.tenant("alpha")
    pods = await web_pods(cloud, t, "web", [1, 2, 3])
    client = await cloud.run_pod(t, "client", cloud.hosts.host(1))
    servers = start_servers(cloud, pods, 8000)
    try:
        svc = await t.call("CreateService", service("web", {"app": "web"}, [(80, 8000)]))
        vip = svc.spec.cluster_ip
        await eventually(lambda: _count_is(t, "web", 3), "three endpoints are ready")
        netns = cloud.pod_netns(client)
        await eventually(lambda: reachable(cloud, netns, vip, 80), "the VIP answers")
        seen = await answers(cloud, netns, vip, 80, 50)
        assert set(seen) == {"web-0", "web-1", "web-2"}, seen
        assert min(seen.values()) >= 10, f"round robin spreads 50 requests evenly: {seen}"
        # Hairpin: a pod reaches its own service, itself included.
        own = await answers(cloud, cloud.pod_netns(pods[0]), vip, 80, 30)
        assert "FAILED" not in own and "web-0" in own, own
        # What lb-1 programmed, read back from its kernel.
        async with cloud.lbs[cloud.hosts.host(1)].channel() as ch:
            listed = await lb_pb2_grpc.LoadBalancerServiceStub(ch).ListVirtualServices(
                lb_pb2.ListVirtualServicesRequest(tenant="alpha")
            )
        mine = [v for v in listed.virtual_services if v.vip == vip]
        assert mine and mine[0].service == "default/web" and mine[0].frontend == lb_pb2.FRONTEND_CLUSTER_IP
        assert sorted(s.ip for s in mine[0].real_servers) == sorted(p.status.pod_ip for p in pods)
        # Scale to one: only that endpoint answers.
        await delete_pods(t, "web-1", "web-2")
        await eventually(lambda: _count_is(t, "web", 1), "one endpoint is left")
        await asyncio.sleep(0.3)
        after = await answers(cloud, netns, vip, 80, 20)
        assert set(after) == {"web-0"}, after
    finally:
        for s in servers:
            s.kill()
    await t.call("DeleteService", network_pb2.ObjectRef(name="web"))
    await delete_pods(t, "web-0", "client")


async def _count_is(t: Tenant, name: str, n: int) -> bool:
    return await ready_endpoints(t, name) == n


async def test_client_ip_affinity_keeps_a_client_on_one_endpoint(lbcloud: Cloud) -> None:
    cloud = lbcloud
    t = await cloud.tenant("alpha")
    pods = await web_pods(cloud, t, "sticky", [1, 2, 3])
    clients = [await cloud.run_pod(t, f"c{i}", cloud.hosts.host(i + 1)) for i in range(2)]
    servers = start_servers(cloud, pods, 8000)
    try:
        svc = await t.call("CreateService", service("sticky", {"app": "sticky"}, [(80, 8000)], affinity=True))
        # The control: the same pods behind a Service without affinity, so
        # that balancing stuck on one endpoint cannot pass for affinity.
        spread = await t.call("CreateService", service("spread", {"app": "sticky"}, [(80, 8000)]))
        vip = svc.spec.cluster_ip
        await eventually(lambda: _count_is(t, "sticky", 3), "three endpoints are ready")
        for client in clients:
            netns = cloud.pod_netns(client)
            await eventually(lambda netns=netns: reachable(cloud, netns, vip, 80), "the VIP answers")  # type: ignore[misc]
            seen = await answers(cloud, netns, vip, 80, 30)
            assert len(seen) == 1 and "FAILED" not in seen, f"one client, one endpoint: {seen}"
            control = await answers(cloud, netns, spread.spec.cluster_ip, 80, 30)
            assert len(control) >= 2 and "FAILED" not in control, f"without affinity it spreads: {control}"
    finally:
        for s in servers:
            s.kill()
    await t.call("DeleteService", network_pb2.ObjectRef(name="sticky"))
    await t.call("DeleteService", network_pb2.ObjectRef(name="spread"))
    await delete_pods(t, *(p.metadata.name for p in pods), "c0", "c1")


async def test_node_port_answers_on_every_host(lbcloud: Cloud) -> None:
    cloud = lbcloud
    t = await cloud.tenant("alpha")
    pods = await web_pods(cloud, t, "np", [1, 2])
    servers = start_servers(cloud, pods, 8000)
    try:
        svc = await t.call(
            "CreateService", service("np", {"app": "np"}, [(80, 8000)], kind=objects_pb2.SERVICE_TYPE_NODE_PORT)
        )
        node_port = svc.spec.ports[0].node_port
        assert node_port
        await eventually(lambda: _count_is(t, "np", 2), "two endpoints are ready")
        # From another host to host 1; from the internet to host 3, which
        # has none of the tenant's pods and sends the traffic on.
        h1_ip = cloud.hosts.underlay_ip(1)
        await eventually(
            lambda: reachable(cloud, cloud.hosts.host(2), h1_ip, node_port),
            lambda: "host 1's node port\n" + kernel_state(cloud, 1),
        )
        seen = await answers(cloud, cloud.hosts.host(2), h1_ip, node_port, 20)
        assert set(seen) == {"np-0", "np-1"}, seen
        h3_ip = cloud.hosts.underlay_ip(3)
        await eventually(
            lambda: reachable(cloud, cloud.hosts.internet, h3_ip, node_port),
            lambda: "host 3's node port\n" + kernel_state(cloud, 3),
        )
        seen = await answers(cloud, cloud.hosts.internet, h3_ip, node_port, 20)
        assert set(seen) == {"np-0", "np-1"}, seen
    finally:
        for s in servers:
            s.kill()
    await t.call("DeleteService", network_pb2.ObjectRef(name="np"))
    await delete_pods(t, "np-0", "np-1")


async def test_floating_ip_from_the_internet_several_ports_and_unbinding(lbcloud: Cloud) -> None:
    cloud = lbcloud
    t = await cloud.tenant("alpha")
    fip = (await t.call("AllocateFloatingIP", network_pb2.AllocateFloatingIPRequest())).address
    web = await web_pods(cloud, t, "nginx", [1, 2])
    api = await web_pods(cloud, t, "api", [3])
    servers = start_servers(cloud, web, 80) + start_servers(cloud, api, 81)
    lb = objects_pb2.SERVICE_TYPE_LOAD_BALANCER
    inet = cloud.hosts.internet
    try:
        await t.call("CreateService", service("test-loadbalancer", {"app": "nginx"}, [(8080, 80)], lb, fip=fip))
        await t.call("CreateService", service("api", {"app": "api"}, [(9090, 81)], lb, fip=fip))
        await eventually(lambda: reachable(cloud, inet, fip, 8080), "the floating IP answers on 8080")
        seen = await answers(cloud, inet, fip, 8080, 30)
        assert set(seen) == {"nginx-0", "nginx-1"}, f"both replicas, on two hosts, serve: {seen}"
        await eventually(lambda: reachable(cloud, inet, fip, 9090), "the floating IP answers on 9090")
        assert set(await answers(cloud, inet, fip, 9090, 5)) == {"api-0"}
        # A pod on the host that answers for the address sees the client;
        # one on another host sees that host's router (so its reply returns).
        identities = {names.router_identity(cloud.hosts.underlay_ip(n)) for n in (1, 2, 3)}
        for _ in range(4):
            peer = connect(cloud, inet, fip, 8080).split()[1]
            assert peer == INTERNET_IP or peer in identities, peer
        # Unbinding one service stops its port; the other keeps answering.
        await t.call("DeleteService", network_pb2.ObjectRef(name="api"))
        await eventually(lambda: silent(cloud, inet, fip, 9090), "port 9090 stops answering")
        assert set(await answers(cloud, inet, fip, 8080, 4)) <= {"nginx-0", "nginx-1"}
    finally:
        for s in servers:
            s.kill()
    await t.call("DeleteService", network_pb2.ObjectRef(name="test-loadbalancer"))
    await eventually(lambda: silent(cloud, inet, fip, 8080), "the FIP is silent")
    await t.call("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=fip))
    await delete_pods(t, "nginx-0", "nginx-1", "api-0")


async def test_two_tenants_with_the_same_cluster_ip_reach_only_their_own(lbcloud: Cloud) -> None:
    cloud = lbcloud
    a, b = await cloud.tenant("alpha"), await cloud.tenant("beta")
    vip = "10.244.240.77"
    servers = []
    clients = {}
    for t in (a, b):
        pod = await cloud.run_pod(t, "same", cloud.hosts.host(1), {"app": "same"})
        servers.append(serve(cloud.pod_netns(pod), 8000, t.name))
        clients[t.name] = await cloud.run_pod(t, "asker", cloud.hosts.host(2))
        await t.call("CreateService", service("same", {"app": "same"}, [(80, 8000)], cluster_ip=vip))
    try:
        for t in (a, b):
            netns = cloud.pod_netns(clients[t.name])
            await eventually(lambda netns=netns: reachable(cloud, netns, vip, 80), f"{t.name}'s VIP answers")  # type: ignore[misc]
            assert set(await answers(cloud, netns, vip, 80, 10)) == {t.name}
    finally:
        for s in servers:
            s.kill()
    for t in (a, b):
        await t.call("DeleteService", network_pb2.ObjectRef(name="same"))
        await delete_pods(t, "same", "asker")


async def test_an_lb_restart_does_not_break_a_long_transfer(lbcloud: Cloud) -> None:
    cloud = lbcloud
    t = await cloud.tenant("alpha")
    server_pod = await cloud.run_pod(t, "echo", cloud.hosts.host(2), {"app": "echo"})
    client = await cloud.run_pod(t, "talker", cloud.hosts.host(1))
    echo = serve(cloud.pod_netns(server_pod), 8000, "echo", ECHO)
    try:
        svc = await t.call("CreateService", service("echo", {"app": "echo"}, [(80, 8000)]))
        await eventually(lambda: _count_is(t, "echo", 1), "the endpoint is ready")
        await asyncio.sleep(1)
        talk = subprocess.Popen(
            ["ip", "netns", "exec", cloud.pod_netns(client), sys.executable, "-c", CHATTER,
             svc.spec.cluster_ip, "80", "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        await asyncio.sleep(1.5)
        lb1 = cloud.lbs[cloud.hosts.host(1)]
        assert lb1.proc is not None
        lb1.proc.send_signal(signal.SIGKILL)
        await lb1.kill()
        await cloud.start_lb(1, ["--backend", "nftables"])
        out, err = await asyncio.to_thread(talk.communicate, timeout=30)
        assert talk.returncode == 0, f"the transfer broke: {err}"
        assert int(out.split()[1]) > 50, out
    finally:
        echo.kill()
    await t.call("DeleteService", network_pb2.ObjectRef(name="echo"))
    await delete_pods(t, "echo", "talker")


async def test_a_udp_client_moves_on_when_its_endpoint_goes(lbcloud: Cloud) -> None:
    cloud = lbcloud
    t = await cloud.tenant("alpha")
    pods = await web_pods(cloud, t, "dns", [1, 2])
    asker = await cloud.run_pod(t, "resolver", cloud.hosts.host(1))
    servers = [serve(cloud.pod_netns(p), 5353, p.metadata.name, UDP_SERVER) for p in pods]
    reached = ""
    try:
        svc = await t.call(
            "CreateService", service("dns", {"app": "dns"}, [(53, 5353)], protocol=meta_pb2.PROTOCOL_UDP)
        )
        await eventually(lambda: _count_is(t, "dns", 2), "two endpoints are ready")
        await asyncio.sleep(0.5)
        ask = subprocess.Popen(
            ["ip", "netns", "exec", cloud.pod_netns(asker), sys.executable, "-c", UDP_ASKER,
             svc.spec.cluster_ip, "53", "12"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert ask.stdout is not None
        first = await asyncio.to_thread(ask.stdout.readline)
        while first.strip() == "-":
            first = await asyncio.to_thread(ask.stdout.readline)
        reached = first.strip()
        assert reached in ("dns-0", "dns-1"), first
        await t.call("DeletePod", network_pb2.ObjectRef(name=reached))
        rest, _ = await asyncio.to_thread(ask.communicate, timeout=30)
        replies = [line for line in rest.split() if line != "-"]
        other = "dns-1" if reached == "dns-0" else "dns-0"
        assert replies and replies[-1] == other, f"the same source port reaches the other endpoint: {rest.split()}"
    finally:
        for s in servers:
            s.kill()
    await t.call("DeleteService", network_pb2.ObjectRef(name="dns"))
    await delete_pods(t, *(p.metadata.name for p in pods if p.metadata.name != reached), "resolver")
