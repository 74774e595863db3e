"""A pod's network status: what its node's agent reports, and the copy of
that report in the pod's own status.

An agent may write only its own node's keys in etcd, so it never writes a
pod: it reports under /pinet/v1/podnetwork/<node>/<uid> (`NetworkReports`),
and the network service, which owns pods, copies each report into the pod
it names when that pod is on that node (`set_network_ready`).
"""

from __future__ import annotations

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import POD_NETWORK, PODS
from pinet.objects.store import update

ReportState = tuple[bool, str, str]  # ready, netns, message


def report_state(report: objects_pb2.Pod) -> ReportState:
    return report.status.network_ready, report.status.netns, report.status.message


def needs_copy(pod: objects_pb2.Pod, report: objects_pb2.Pod) -> bool:
    """Whether the pod's status differs from its report."""
    return (pod.status.network_ready, pod.status.netns, pod.status.message) != report_state(report)


async def set_network_ready(
    etcd: Etcd, tenant: str, namespace: str, name: str, uid: str, ready: bool, netns: str = "", message: str = ""
) -> bool:
    """Record whether the pod's network is wired. Only the pod with this uid
    is touched (a pod recreated under the same name is another pod).
    Returns False when that pod does not exist."""
    found = False

    def mutate(pod: objects_pb2.Pod) -> bool:
        nonlocal found
        if pod.metadata.uid != uid:
            return False
        found = True
        phase = objects_pb2.POD_PHASE_RUNNING if ready else objects_pb2.POD_PHASE_PENDING
        if pod.metadata.HasField("deletion_timestamp"):
            phase = objects_pb2.POD_PHASE_TERMINATING
        if (pod.status.network_ready, pod.status.phase, pod.status.netns, pod.status.message) == (
            ready,
            phase,
            netns,
            message,
        ):
            return False
        pod.status.network_ready = ready
        pod.status.phase = phase
        pod.status.netns = netns
        pod.status.message = message
        return True

    await update(etcd, PODS, PODS.key(tenant, namespace, name), mutate)
    return found


class NetworkReports:
    """One agent's reports, written only when they change."""

    def __init__(self, etcd: Etcd, node: str) -> None:
        self.etcd = etcd
        self.node = node
        self.reported: dict[str, ReportState] = {}

    async def load(self) -> None:
        """Learn what an earlier run of this agent reported."""
        items, _ = await self.etcd.list_prefix(POD_NETWORK.scope_prefix(self.node))
        for kv in items:
            self.reported[POD_NETWORK.parts(kv.key)[1]] = report_state(POD_NETWORK.decode(kv.value))

    async def report(
        self, tenant: str, namespace: str, name: str, uid: str, ready: bool, netns: str = "", message: str = ""
    ) -> None:
        state = (ready, netns, message)
        if self.reported.get(uid) == state:
            return
        report = objects_pb2.Pod()
        report.metadata.tenant, report.metadata.namespace, report.metadata.name = tenant, namespace, name
        report.metadata.uid = uid
        report.spec.node_name = self.node
        report.status.network_ready, report.status.netns, report.status.message = state
        await self.etcd.put(POD_NETWORK.key(self.node, uid), POD_NETWORK.encode(report))
        self.reported[uid] = state

    async def forget(self, uid: str) -> None:
        if uid in self.reported:
            await self.etcd.delete(POD_NETWORK.key(self.node, uid))
            del self.reported[uid]

    async def forget_all_but(self, uids: set[str]) -> None:
        for uid in [u for u in self.reported if u not in uids]:
            await self.forget(uid)
