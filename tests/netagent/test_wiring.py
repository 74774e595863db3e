"""The agent's wiring on three simulated hosts, checked with real traffic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.devstack.hosts import INTERNET_IP
from tests.helpers.cloud import Cloud
from tests.helpers.traffic import CHATTER, ECHO, connect, serve


async def test_pod_to_pod_on_one_host_and_across_hosts_keeps_the_source_ip(cloud: Cloud) -> None:
    t = await cloud.tenant("alpha")
    h1, h2 = cloud.hosts.host(1), cloud.hosts.host(2)
    a = await cloud.run_pod(t, "a", h1)
    b = await cloud.run_pod(t, "b", h1)
    c = await cloud.run_pod(t, "c", h2)
    server = serve(cloud.pod_netns(a), 8000, "a")
    try:
        assert connect(cloud, cloud.pod_netns(b), a.status.pod_ip, 8000) == f"a {b.status.pod_ip}", "same host"
        assert connect(cloud, cloud.pod_netns(c), a.status.pod_ip, 8000) == f"a {c.status.pod_ip}", "across hosts"
    finally:
        server.kill()
    # What the agent set up inside the pod.
    netns = cloud.pod_netns(a)
    link = cloud.hosts.exec(netns, "ip", "-j", "link", "show", "eth0").stdout
    assert json.loads(link)[0]["mtu"] == 1450
    route = cloud.hosts.exec(netns, "ip", "route", "show", "default").stdout
    assert route.startswith("default via 10.244.0.1")
    services = cloud.hosts.exec(netns, "ip", "route", "show", "10.244.240.0/20").stdout
    assert services.startswith("10.244.240.0/20 via 10.244.0.1"), "service addresses go to the router"
    resolv = open(f"/etc/netns/{netns}/resolv.conf").read()
    assert (
        "nameserver 10.244.0.2" in resolv
        and "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    )
    assert "options ndots:5" in resolv
    for name in ("a", "b", "c"):
        await t.call("DeletePod", network_pb2.ObjectRef(name=name))


async def test_pods_reach_the_internet_but_the_internet_cannot_reach_pods(cloud: Cloud) -> None:
    t = await cloud.tenant("alpha")
    p = await cloud.run_pod(t, "web-client", cloud.hosts.host(2))
    web = serve(cloud.hosts.internet, 8080, "internet")
    listener = serve(cloud.pod_netns(p), 9000, "pod")
    try:
        reply = connect(cloud, cloud.pod_netns(p), INTERNET_IP, 8080)
        assert reply.startswith("internet "), reply
        assert reply.split()[1] == cloud.hosts.underlay_ip(2), "egress is NATed to the host's address"
        assert connect(cloud, cloud.hosts.internet, p.status.pod_ip, 9000, 1).startswith("FAILED")
        # Not even from the host itself, and not through the router's uplink.
        assert connect(cloud, cloud.hosts.host(2), p.status.pod_ip, 9000, 1).startswith("FAILED")
    finally:
        web.kill()
        listener.kill()
    await t.call("DeletePod", network_pb2.ObjectRef(name="web-client"))


async def test_tenants_are_isolated(cloud: Cloud) -> None:
    a, b = await cloud.tenant("alpha"), await cloud.tenant("beta")
    h1, h3 = cloud.hosts.host(1), cloud.hosts.host(3)
    a_pods = [await cloud.run_pod(a, f"a{i}", h) for i, h in enumerate((h1, h3))]
    b_pods = [await cloud.run_pod(b, f"b{i}", h) for i, h in enumerate((h1, h3))]
    servers = [serve(cloud.pod_netns(p), 7000, "beta") for p in b_pods]
    servers += [serve(cloud.pod_netns(p), 7000, "alpha") for p in a_pods]
    try:
        for src in a_pods:
            for dst in b_pods:
                reply = connect(cloud, cloud.pod_netns(src), dst.status.pod_ip, 7000, 1)
                assert not reply.startswith("beta"), f"alpha reached beta's {dst.status.pod_ip}: {reply}"
        # Each tenant still reaches its own pods on both hosts.
        assert connect(cloud, cloud.pod_netns(a_pods[0]), a_pods[1].status.pod_ip, 7000).startswith("alpha")
        assert connect(cloud, cloud.pod_netns(b_pods[0]), b_pods[1].status.pod_ip, 7000).startswith("beta")
    finally:
        for s in servers:
            s.kill()
    for i in range(2):
        await a.call("DeletePod", network_pb2.ObjectRef(name=f"a{i}"))
        await b.call("DeletePod", network_pb2.ObjectRef(name=f"b{i}"))


async def test_agent_restart_cleans_up_and_repairs_without_disturbing_others(cloud: Cloud) -> None:
    t = await cloud.tenant("alpha")
    h1, h3 = cloud.hosts.host(1), cloud.hosts.host(3)
    q1 = await cloud.run_pod(t, "q1", h1)
    q2 = await cloud.run_pod(t, "q2", h3)
    gone = await cloud.run_pod(t, "gone", h3)
    broken = await cloud.run_pod(t, "broken", h3)
    echo = serve(cloud.pod_netns(q2), 6000, "", ECHO)
    chatter = subprocess.Popen(
        ["ip", "netns", "exec", cloud.pod_netns(q1), sys.executable, "-c", CHATTER, q2.status.pod_ip, "6000", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        agent = cloud.agents[h3]
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        await agent.proc.wait()
        await t.call("DeletePod", network_pb2.ObjectRef(name="gone"))
        tenant_info = await t.call("WhoAmI", network_pb2.WhoAmIRequest())
        router_ns = f"pinet-{h3.removeprefix('pinet-')}-r{tenant_info.tenant_info.network.vni}"
        veth = next(
            line.split(":")[1].strip().split("@")[0]
            for line in cloud.hosts.exec(router_ns, "ip", "-o", "link", "show").stdout.splitlines()
            if broken.metadata.uid in line
        )
        cloud.hosts.exec(router_ns, "ip", "link", "del", veth)
        restarted = time.monotonic()
        await cloud.start_agent(3)
        gone_ns = cloud.pod_netns(gone)
        while gone_ns in os.listdir("/run/netns") or not _healthy(cloud, h3, broken):
            assert time.monotonic() - restarted < 5, "not cleaned and repaired within 5 s"
            await asyncio.sleep(0.1)
        assert connect(cloud, cloud.pod_netns(q1), broken.status.pod_ip, 1, 1).startswith("FAILED [Errno 111]"), (
            "the repaired pod answers (connection refused, not a timeout)"
        )
        out, err = chatter.communicate(timeout=30)
        assert chatter.returncode == 0, f"the long-lived connection broke: {err}"
        assert int(out.split()[1]) > 100
    finally:
        chatter.kill()
        echo.kill()
    for name in ("q1", "q2", "broken"):
        await t.call("DeletePod", network_pb2.ObjectRef(name=name))


def _healthy(cloud: Cloud, node: str, pod: objects_pb2.Pod) -> bool:
    import grpc

    from pinet.runtime.tls import sync_channel
    from tests.helpers import tls

    agent = cloud.agents[node]
    with sync_channel(tls.tls(), agent.address, agent.identity) as ch:
        stub = netagent_pb2_grpc.AgentServiceStub(ch)
        ref = netagent_pb2.PodRef(tenant="alpha", namespace="default", name=pod.metadata.name)
        try:
            return bool(stub.Check(netagent_pb2.CheckRequest(pod=ref), timeout=2).healthy)
        except grpc.RpcError:
            return False


async def test_everything_is_removed_when_the_pods_go(cloud: Cloud) -> None:
    t = await cloud.tenant("alpha")
    await cloud.run_pod(t, "last", cloud.hosts.host(2))
    await t.call("DeletePod", network_pb2.ObjectRef(name="last"))
    deadline = time.monotonic() + 10
    harness = {cloud.hosts.underlay, cloud.hosts.internet, *cloud.hosts.hosts}
    while True:
        mine = {n for n in os.listdir("/run/netns") if n.startswith(cloud.hosts.prefix)}
        if mine == harness:
            break
        assert time.monotonic() < deadline, f"left behind: {sorted(mine - harness)}"
        await asyncio.sleep(0.2)
    for host in cloud.hosts.hosts:
        links = cloud.hosts.exec(host, "ip", "-o", "link", "show").stdout
        assert " pr" not in links and "pvx" not in links, links
