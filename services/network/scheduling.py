"""Choosing a node for a pod (pure logic): among ready nodes, the one with
the fewest pods; ties go to the first name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pinet.runtime.errors import failed_precondition


def pick_node(ready_nodes: Iterable[str], pod_counts: Mapping[str, int]) -> str:
    candidates = sorted(ready_nodes, key=lambda n: (pod_counts.get(n, 0), n))
    if not candidates:
        raise failed_precondition("no node is ready to run the pod; check `pi get nodes`")
    return candidates[0]
