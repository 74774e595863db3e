"""Label selectors as values (pure logic): what a Service, a Deployment, a
list filter and a NetworkPolicy select pods and namespaces by.

Parsing the text form lives with the API's validation
(services/network/selectors.py); the policy form comes from
pinet.network.v1.LabelSelector (from_proto)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pinet.api.network.v1 import policy_pb2

OPERATORS = {
    policy_pb2.SELECTOR_OPERATOR_IN: "in",
    policy_pb2.SELECTOR_OPERATOR_NOT_IN: "notin",
    policy_pb2.SELECTOR_OPERATOR_EXISTS: "exists",
    policy_pb2.SELECTOR_OPERATOR_DOES_NOT_EXIST: "!",
}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def anchors(self) -> frozenset[tuple[str, str]] | None:
        """Label pairs of which every object this selects has one (from its
        first equality or `in` requirement), so an index by label pair finds
        the selectors worth evaluating for an object; None when the selector
        has no such requirement and must be evaluated for every object."""
        for r in self.requirements:
            if r.op in ("=", "in"):
                return frozenset((r.key, v) for v in r.values)
        return None


EVERYTHING = Selector()


def from_proto(selector: policy_pb2.LabelSelector) -> Selector:
    reqs = [Requirement(k, "=", frozenset([v])) for k, v in sorted(selector.match_labels.items())]
    for expr in selector.match_expressions:
        reqs.append(Requirement(expr.key, OPERATORS.get(expr.operator, "in"), frozenset(expr.values)))
    return Selector(tuple(reqs))
