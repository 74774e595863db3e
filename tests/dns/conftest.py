"""DNS fixtures: the platform, agents that wire pods, a dns process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.cli import manifests
from pinet.devstack.etcd import EtcdServer, free_port
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.platform import Platform, Tenant
from tests.helpers.procs import ServiceProcess

OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec: {selector: {app: api}, ports: [{port: 443}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec: {hostname: db-1, subdomain: db, containers: [{name: c, image: x}]}
"""


@dataclass
class DnsLab:
    tenant: Tenant
    port: int
    dns: ServiceProcess
    ips: dict[str, str]  # object name -> its IP (service IP or pod IP)

    async def call(self, method: str, request: Any) -> Any:
        return await self.tenant.call(method, request)


async def create_objects(t: Tenant, text: str) -> dict[str, str]:
    ips: dict[str, str] = {}
    for doc in manifests.load_all(text, "dns"):
        if isinstance(doc.obj, objects_pb2.Service):
            svc = await t.call("CreateService", network_pb2.CreateServiceRequest(service=doc.obj))
            ips[svc.metadata.name] = svc.spec.cluster_ip
        else:
            assert isinstance(doc.obj, objects_pb2.Pod)
            pod = await t.call("CreatePod", network_pb2.CreatePodRequest(pod=doc.obj))
            ips[pod.metadata.name] = pod.status.pod_ip
    return ips


@pytest.fixture(scope="module")
async def dns_lab(etcd_server: EtcdServer, platform: Platform) -> AsyncIterator[DnsLab]:
    etcd = await etcd_server.client().connect()
    suffix = uuid.uuid4().hex[:6]
    agents = await FakeWiringAgents(etcd, {f"dns-a-{suffix}": "192.0.2.21"}).start()
    tenant = await platform.tenant()
    port = free_port()
    dns = await ServiceProcess(
        "dns", etcd_server.endpoint, ["--dns-listen", f"127.0.0.1:{port}", "--dns-tenant", tenant.name]
    ).start()
    try:
        ips = await create_objects(tenant, OBJECTS)
        deadline = time.monotonic() + 15
        while True:  # both headless endpoints ready
            ep = await tenant.call("GetEndpoints", network_pb2.ObjectRef(name="db"))
            if len(ep.endpoints) == 2:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        yield DnsLab(tenant, port, dns, ips)
    finally:
        await dns.terminate()
        await agents.stop()
        await etcd.close()
