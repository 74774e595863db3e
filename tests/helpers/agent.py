"""Stand-in for node agents in tests of the network API: registers nodes
with real heartbeat leases and reports every pod scheduled on them as wired,
through the same calls a netagent makes, without touching the kernel."""

from __future__ import annotations

import asyncio

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Event, EventType, Informer
from pinet.etcd.keyspace import PODS
from pinet.objects.podnetwork import set_network_ready
from pinet.runtime.tasks import cancel_and_wait
from services.netagent.registration import NodeRegistration


class FakeWiringAgents:
    def __init__(self, etcd: Etcd, nodes: dict[str, str], register: bool = True) -> None:
        self.etcd = etcd
        self.nodes = nodes  # name -> underlay ip
        # register=False: the nodes are registered by real agents already.
        self.register = register
        self.registrations: dict[str, NodeRegistration] = {}
        self.pods: Informer[objects_pb2.Pod] = Informer(etcd, PODS.prefix, PODS.decode, "test-agents")
        self.queue: asyncio.Queue[objects_pb2.Pod] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> FakeWiringAgents:
        for name, ip in self.nodes.items() if self.register else ():
            reg = NodeRegistration(self.etcd, objects_pb2.Node(name=name, underlay_ip=ip), ttl=2)
            await reg.start()
            self.registrations[name] = reg
        self.pods.subscribe(self._on_pod)
        self.pods.start()
        await self.pods.wait_synced()
        self.task = asyncio.create_task(self._wire())
        return self

    def _on_pod(self, event: Event[objects_pb2.Pod]) -> None:
        pod = event.obj
        wired = event.type is EventType.DELETED or pod.status.network_ready
        if pod.spec.node_name in self.nodes and not wired:
            self.queue.put_nowait(pod)

    async def _wire(self) -> None:
        while True:
            pod = await self.queue.get()
            m = pod.metadata
            await set_network_ready(self.etcd, m.tenant, m.namespace, m.name, m.uid, True, f"/run/netns/{m.uid[:8]}")

    async def kill_node(self, name: str) -> None:
        """The host dies: its heartbeat stops without a goodbye."""
        reg = self.registrations.pop(name)
        assert reg.lease is not None
        await reg.lease.close(revoke=True)
        if reg._task is not None:
            reg._task.cancel()

    async def stop(self) -> None:
        await cancel_and_wait(self.task)
        await self.pods.stop()
        for reg in self.registrations.values():
            await reg.stop()
