"""The agent's share of network policies: one engine per tenant that has
policies (policy_engine.py), fed from the informers as objects change, and
the metrics of what the policies allowed and dropped.

A tenant without policies costs nothing here: its engine is made, from the
informers' caches, when its first policy appears, and dropped with its last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter

from pinet.api.network.v1 import objects_pb2, policy_pb2
from pinet.objects import protocol as transport
from services.netagent.policy_engine import (
    DIRECTION_NAMES,
    DIRECTIONS,
    PodInfo,
    TenantPolicies,
    allowed_counter,
    dropped_counter,
)
from services.netagent.policy_model import PROTOCOL_NUMBERS, compile_policy

CONNECTIONS = Counter(
    "pinet_netpol_connections_total",
    "New connections network policies allowed or dropped in this host's routers, by tenant, policy "
    "(namespace/name; a connection several policies allow counts for the first of them by number) and direction.",
    ["tenant", "policy", "direction", "verdict"],
)


def pod_info(pod: objects_pb2.Pod) -> PodInfo | None:
    """What policies see of a pod; None while it has no address or goes."""
    if not pod.status.pod_ip or pod.metadata.HasField("deletion_timestamp"):
        return None
    ports = frozenset(
        (PROTOCOL_NUMBERS[transport.effective(p.protocol)], p.name, p.container_port)
        for c in pod.spec.containers
        for p in c.ports
        if p.name
    )
    return PodInfo(
        pod.metadata.uid, pod.status.pod_ip, pod.metadata.namespace or "default",
        frozenset(pod.metadata.labels.items()), ports,
    )  # fmt: skip


def policy_key(policy: policy_pb2.NetworkPolicy) -> str:
    return f"{policy.metadata.namespace or 'default'}/{policy.metadata.name}"


class AgentPolicies:
    def __init__(
        self,
        pods_of: Callable[[str], Iterable[objects_pb2.Pod]],
        policies_of: Callable[[str], Iterable[policy_pb2.NetworkPolicy]],
        namespaces_of: Callable[[str], Iterable[policy_pb2.Namespace]],
    ) -> None:
        self._pods_of = pods_of
        self._policies_of = policies_of
        self._namespaces_of = namespaces_of
        self.engines: dict[str, TenantPolicies] = {}
        self._counted: dict[tuple[str, str, str], int] = {}  # (router, tenant, counter) -> packets so far

    def _build(self, tenant: str) -> TenantPolicies:
        engine = TenantPolicies({n.metadata.name: dict(n.metadata.labels) for n in self._namespaces_of(tenant)})
        for pod in self._pods_of(tenant):
            info = pod_info(pod)
            if info is not None:
                engine.set_pod(info, info.uid)
        for policy in self._policies_of(tenant):
            engine.set_policy(policy_key(policy), compile_policy(policy))
        return engine

    def on_policy(self, tenant: str, policy: policy_pb2.NetworkPolicy, deleted: bool) -> None:
        engine = self.engines.get(tenant)
        if engine is None:
            if deleted:
                return
            self.engines[tenant] = self._build(tenant)
            return
        engine.set_policy(policy_key(policy), None if deleted else compile_policy(policy))
        if not engine.policies:
            del self.engines[tenant]

    def on_pod(self, pod: objects_pb2.Pod, deleted: bool) -> bool:
        """True when the pod's tenant has policies (its routers change)."""
        engine = self.engines.get(pod.metadata.tenant)
        if engine is None:
            return False
        engine.set_pod(None if deleted else pod_info(pod), pod.metadata.uid)
        return True

    def on_namespace(self, namespace: policy_pb2.Namespace, deleted: bool) -> bool:
        engine = self.engines.get(namespace.metadata.tenant)
        if engine is None:
            return False
        engine.set_namespace(namespace.metadata.name, None if deleted else dict(namespace.metadata.labels))
        return True

    def export(self, counters: dict[str, dict[str, int]], tenant_of: dict[str, str]) -> None:
        """Counter packets read from each router, into the metrics."""
        for netns, values in counters.items():
            tenant = tenant_of.get(netns, "")
            engine = self.engines.get(tenant)
            if engine is None:
                continue
            for number, key in engine.policy_of_number().items():
                for direction in DIRECTIONS:
                    for verdict, name in (
                        ("allowed", allowed_counter(number, direction)), ("dropped", dropped_counter(number, direction))
                    ):  # fmt: skip
                        if name not in values:
                            continue
                        packets, seen = values[name], self._counted.get((netns, tenant, name), 0)
                        # A counter made anew (policy re-numbered, table remade) starts from zero.
                        CONNECTIONS.labels(tenant, key, DIRECTION_NAMES[direction], verdict).inc(
                            packets - seen if packets >= seen else packets
                        )
                        self._counted[(netns, tenant, name)] = packets
