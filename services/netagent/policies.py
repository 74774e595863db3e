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
from services.netagent.policy_engine import DIRECTION_NAMES, Key, PodInfo, TenantPolicies, policy_number
from services.netagent.policy_model import PROTOCOL_NUMBERS, compile_policy
from services.netagent.policy_rules import logical_set
from services.netagent.policy_tables import Counted

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
        self._counted: dict[str, Counted] = {}  # router -> what its elements had counted at the last export

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

    def export(self, counters: dict[str, Counted], tenant_of: dict[str, str]) -> None:
        """Packets read from each router's counting elements, into the
        metrics, each for the policy the element's value names."""
        for netns, counted in counters.items():
            tenant = tenant_of.get(netns, "")
            engine = self.engines.get(tenant)
            if engine is None:
                continue
            numbers = engine.policy_of_number()
            seen = self._counted.get(netns, {})
            now: dict[tuple[str, Key], int] = {}
            for (set_name, key), packets in counted.items():
                now[(set_name, key)] = packets
                value = engine.attribution(logical_set(set_name), key)
                if value is None:
                    continue
                number, direction, verdict = policy_number(value)
                before = seen.get((set_name, key), 0)
                # An element made anew (or its table remade) counts from zero again.
                delta = packets - before if packets >= before else packets
                if delta and number in numbers:
                    CONNECTIONS.labels(tenant, numbers[number], DIRECTION_NAMES[direction], verdict).inc(delta)
            self._counted[netns] = now
