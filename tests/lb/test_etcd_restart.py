"""The load balancers keep serving while etcd restarts (kill -9), and
program what was written once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pinet.api.network.v1 import objects_pb2
from pinet.devstack.etcd import EtcdServer
from tests.helpers.cloud import running_cloud
from tests.helpers.services import answers, reachable, ready_endpoints, service
from tests.helpers.traffic import serve
from tests.helpers.wait import eventually


async def test_lb_survives_an_etcd_restart(make_etcd_server: Callable[[], EtcdServer], tmp_path: Path) -> None:
    server = make_etcd_server()
    async with running_cloud(server.endpoint, tmp_path, hosts_count=2, lb_args=["--backend", "nftables"]) as cloud:
        t = await cloud.tenant("alpha")
        web = await cloud.run_pod(t, "web", cloud.hosts.host(1), {"app": "web"})
        client = await cloud.run_pod(t, "client", cloud.hosts.host(2))
        netns = cloud.pod_netns(client)
        proc = serve(cloud.pod_netns(web), 8000, "web")
        try:
            first = await t.call("CreateService", service("first", {"app": "web"}, [(80, 8000)]))
            await eventually(lambda: reachable(cloud, netns, first.spec.cluster_ip, 80), "the first service answers")

            await asyncio.to_thread(server.restart, True)
            # The kernel keeps load balancing while etcd is away and back.
            assert set(await answers(cloud, netns, first.spec.cluster_ip, 80, 5)) == {"web"}

            async def created() -> objects_pb2.Service | None:
                try:
                    made: objects_pb2.Service = await t.call(
                        "CreateService", service("second", {"app": "web"}, [(81, 8000)])
                    )
                    return made
                except Exception:
                    return None

            second = None
            for _ in range(100):
                second = await created()
                if second is not None:
                    break
                await asyncio.sleep(0.2)
            assert second is not None, "the API came back"

            async def second_ready() -> bool:
                return await ready_endpoints(t, "second") == 1

            await eventually(second_ready, "the second service has its endpoint", timeout=30)
            await eventually(
                lambda: reachable(cloud, netns, second.spec.cluster_ip, 81), "the lbs program it", timeout=30
            )
        finally:
            proc.kill()
