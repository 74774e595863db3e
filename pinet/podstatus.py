"""What a node agent reports about a pod: its network is wired (or not)."""

from __future__ import annotations

from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import PODS
from pinet.network.v1 import objects_pb2
from pinet.store import update


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
