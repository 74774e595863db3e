from __future__ import annotations
from tests.netagent.conftest import Cloud
async def test_smoke(cloud: Cloud) -> None:
    t = await cloud.tenant("acme")
    a = await cloud.run_pod(t, "a", cloud.hosts.host(1))
    b = await cloud.run_pod(t, "b", cloud.hosts.host(2))
    print(a.status.pod_ip, b.status.pod_ip, a.status.netns)
    out = cloud.in_pod(a, "ping", "-c", "1", "-W", "2", b.status.pod_ip)
    print(out.stdout, out.stderr)
    assert out.returncode == 0
