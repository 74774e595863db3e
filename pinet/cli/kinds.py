"""The kinds of object `pi` knows, in one table: their names, how each is
listed, read, created from a manifest, updated, deleted, described and
printed. A command looks its kind up here instead of branching on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import network_pb2, policy_pb2
from pinet.cli import policy_manifests, tables
from pinet.cli.client import Client, fail
from pinet.objects import labels

Options = meta_pb2.ListOptions


def _all(c: Client, method: Callable[..., Any], request: Any, field: str) -> list[Message]:
    """Every page of a list."""
    out: list[Message] = []
    while True:
        resp = c(method, request)
        out += list(getattr(resp, field))
        if not resp.list_meta.next_page_token:
            return out
        request.options.page_token = resp.list_meta.next_page_token


def _ref(c: Client, name: str, namespace: str = "") -> network_pb2.ObjectRef:
    return network_pb2.ObjectRef(namespace=namespace or c.namespace, name=name)


def _metadata_name(obj: Any) -> str:
    return str(obj.metadata.name)


@dataclass(frozen=True)
class Kind:
    name: str
    aliases: tuple[str, ...]
    rows: Callable[[Sequence[Any], bool], str]
    get: Callable[[Client, str, str], Message]  # (client, name, namespace or "" for the client's)
    list: Callable[[Client, Options], list[Message]]
    name_of: Callable[[Any], str] = _metadata_name
    delete: Callable[[Client, str], object] | None = None
    describe: Callable[[Client, str], str] | None = None
    #: The manifest `kind:` whose objects this is, and how they are made and changed.
    manifest: str = ""
    create: Callable[[Client, Any], Message] | None = None
    update: Callable[[Client, Any], object] | None = None
    #: The labels a Service made by `pi expose` selects this object's pods by.
    selector: Callable[[Client, str], dict[str, str]] | None = None


def _describe_service(c: Client, name: str) -> str:
    return tables.describe_service(c(c.api.GetService, _ref(c, name)), c(c.api.GetEndpoints, _ref(c, name)))


def _pod_labels(c: Client, name: str) -> dict[str, str]:
    labels = dict(c(c.api.GetPod, _ref(c, name)).metadata.labels)
    if not labels:
        fail(f"pod {name} has no labels to select it by; add some with `pi apply`")
    return labels


def _policy_ref(c: Client, name: str, namespace: str = "") -> policy_pb2.PolicyRef:
    return policy_pb2.PolicyRef(namespace=namespace or c.namespace, name=name)


def _describe_policy(c: Client, name: str) -> str:
    """The policy, and the pods it selects now."""
    policy = c(c.policy.GetNetworkPolicy, _policy_ref(c, name))
    ns = policy.metadata.namespace
    pods = _all(c, c.api.ListPods, network_pb2.ListPodsRequest(options=Options(namespace=ns)), "pods")
    target = labels.from_proto(policy.spec.pod_selector)
    selected = [p for p in pods if target.matches(dict(p.metadata.labels))]  # type: ignore[attr-defined]
    return tables.describe_policy(
        policy, selected, policy_manifests.describe_rules(policy.spec.ingress, "from"),
        policy_manifests.describe_rules(policy.spec.egress, "to"),
    )  # fmt: skip


def _nodes(c: Client, options: Options) -> list[Message]:
    options.namespace = ""  # nodes belong to no namespace
    return _all(c, c.api.ListNodes, network_pb2.ListNodesRequest(options=options), "nodes")


KINDS = [
    Kind(
        "pod", ("pods", "po"), tables.pod_rows,
        get=lambda c, name, ns: c(c.api.GetPod, _ref(c, name, ns)),
        list=lambda c, o: _all(c, c.api.ListPods, network_pb2.ListPodsRequest(options=o), "pods"),
        delete=lambda c, name: c(c.api.DeletePod, _ref(c, name)),
        describe=lambda c, name: tables.describe_pod(c(c.api.GetPod, _ref(c, name))),
        manifest="Pod",
        create=lambda c, obj: c(c.api.CreatePod, network_pb2.CreatePodRequest(pod=obj)),
        update=lambda c, obj: c(c.api.UpdatePod, network_pb2.UpdatePodRequest(pod=obj)),
        selector=_pod_labels,
    ),
    Kind(
        "service", ("services", "svc"), tables.service_rows,
        get=lambda c, name, ns: c(c.api.GetService, _ref(c, name, ns)),
        list=lambda c, o: _all(c, c.api.ListServices, network_pb2.ListServicesRequest(options=o), "services"),
        delete=lambda c, name: c(c.api.DeleteService, _ref(c, name)),
        describe=_describe_service,
        manifest="Service",
        create=lambda c, obj: c(c.api.CreateService, network_pb2.CreateServiceRequest(service=obj)),
        update=lambda c, obj: c(c.api.UpdateService, network_pb2.UpdateServiceRequest(service=obj)),
    ),
    Kind(
        "endpoints", ("endpoint", "ep"), tables.endpoints_rows,
        get=lambda c, name, ns: c(c.api.GetEndpoints, _ref(c, name, ns)),
        list=lambda c, o: _all(c, c.api.ListEndpoints, network_pb2.ListEndpointsRequest(options=o), "endpoints"),
    ),
    Kind(
        "deployment", ("deployments", "deploy"), tables.deployment_rows,
        get=lambda c, name, ns: c(c.api.GetDeployment, _ref(c, name, ns)),
        list=lambda c, o: _all(
            c, c.api.ListDeployments, network_pb2.ListDeploymentsRequest(options=o), "deployments"
        ),
        delete=lambda c, name: c(c.api.DeleteDeployment, _ref(c, name)),
        manifest="Deployment",
        create=lambda c, obj: c(c.api.CreateDeployment, network_pb2.CreateDeploymentRequest(deployment=obj)),
        update=lambda c, obj: c(c.api.UpdateDeployment, network_pb2.UpdateDeploymentRequest(deployment=obj)),
        selector=lambda c, name: dict(c(c.api.GetDeployment, _ref(c, name)).spec.selector),
    ),
    Kind(
        "node", ("nodes", "no"), tables.node_rows,
        get=lambda c, name, ns: c(c.api.GetNode, network_pb2.GetNodeRequest(name=name)),
        list=_nodes,
        name_of=lambda obj: str(obj.name),
    ),
    Kind(
        "fip", ("fips", "floatingip", "floatingips"), tables.fip_rows,
        get=lambda c, name, ns: c(c.api.GetFloatingIP, network_pb2.GetFloatingIPRequest(address=name)),
        list=lambda c, o: list(c(c.api.ListFloatingIPs, network_pb2.ListFloatingIPsRequest()).floating_ips),
        name_of=lambda obj: str(obj.address),
        delete=lambda c, name: c(c.api.ReleaseFloatingIP, network_pb2.ReleaseFloatingIPRequest(address=name)),
    ),
    Kind(
        "networkpolicy", ("networkpolicies", "netpol"), tables.policy_rows,
        get=lambda c, name, ns: c(c.policy.GetNetworkPolicy, _policy_ref(c, name, ns)),
        list=lambda c, o: _all(
            c, c.policy.ListNetworkPolicies, policy_pb2.ListNetworkPoliciesRequest(options=o), "policies"
        ),
        delete=lambda c, name: c(c.policy.DeleteNetworkPolicy, _policy_ref(c, name)),
        describe=_describe_policy,
        manifest="NetworkPolicy",
        create=lambda c, obj: c(c.policy.CreateNetworkPolicy, policy_pb2.CreateNetworkPolicyRequest(policy=obj)),
        update=lambda c, obj: c(c.policy.UpdateNetworkPolicy, policy_pb2.UpdateNetworkPolicyRequest(policy=obj)),
    ),
    Kind(
        "namespace", ("namespaces", "ns"), tables.namespace_rows,
        get=lambda c, name, ns: c(c.policy.GetNamespace, policy_pb2.NamespaceRef(name=name)),
        list=lambda c, o: _all(c, c.policy.ListNamespaces, policy_pb2.ListNamespacesRequest(options=o), "namespaces"),
        delete=lambda c, name: c(c.policy.DeleteNamespace, policy_pb2.NamespaceRef(name=name)),
        manifest="Namespace",
        create=lambda c, obj: c(c.policy.PutNamespace, policy_pb2.PutNamespaceRequest(namespace=obj)),
        update=lambda c, obj: c(c.policy.PutNamespace, policy_pb2.PutNamespaceRequest(namespace=obj)),
    ),
]  # fmt: skip

BY_NAME = {alias: kind for kind in KINDS for alias in (kind.name, *kind.aliases)}
BY_MANIFEST = {kind.manifest: kind for kind in KINDS if kind.manifest}


def lookup(text: str) -> Kind:
    kind = BY_NAME.get(text.lower())
    if kind is None:
        fail(
            f"unknown resource type {text!r}: pods, services (svc), endpoints (ep), fip, nodes, deployments, "
            "networkpolicies (netpol), namespaces (ns)"
        )
    return kind
