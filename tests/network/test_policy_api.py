"""pinet.network.v1.PolicyService over real gRPC: network policies and
namespaces' labels, their errors, optimistic concurrency and tenancy."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import network_pb2, policy_pb2, policy_pb2_grpc
from pinet.cli.policy_manifests import parse_network_policy
from tests.helpers.platform import Platform, Tenant


async def call(platform: Platform, t: Tenant, method: str, request: Any) -> Any:
    stub = policy_pb2_grpc.PolicyServiceStub(platform.channel)
    return await getattr(stub, method)(request, metadata=t.md, timeout=20)


def netpol(name: str, spec: dict[str, Any], namespace: str = "") -> policy_pb2.NetworkPolicy:
    return parse_network_policy({"spec": spec}, meta_pb2.ObjectMeta(name=name, namespace=namespace), name)


async def refused(platform: Platform, t: Tenant, method: str, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(platform, t, method, request)
    return err.value


async def test_policies_are_created_read_listed_updated_and_deleted(platform: Platform) -> None:
    t = await platform.tenant()
    spec = {"podSelector": {"matchLabels": {"app": "db"}}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}
    created = await call(platform, t, "CreateNetworkPolicy", policy_pb2.CreateNetworkPolicyRequest(
        policy=netpol("db", spec)))  # fmt: skip
    assert created.metadata.namespace == "default" and created.metadata.uid and created.metadata.resource_version
    assert list(created.spec.policy_types) == [policy_pb2.POLICY_TYPE_INGRESS, policy_pb2.POLICY_TYPE_EGRESS]
    got = await call(platform, t, "GetNetworkPolicy", policy_pb2.PolicyRef(name="db"))
    assert got == created
    err = await refused(platform, t, "CreateNetworkPolicy", policy_pb2.CreateNetworkPolicyRequest(
        policy=netpol("db", spec)))  # fmt: skip
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await call(platform, t, "ListNetworkPolicies", policy_pb2.ListNetworkPoliciesRequest())
    assert [p.metadata.name for p in listed.policies] == ["db"]

    changed = netpol("db", {"podSelector": {}})
    changed.metadata.resource_version = created.metadata.resource_version
    updated = await call(platform, t, "UpdateNetworkPolicy", policy_pb2.UpdateNetworkPolicyRequest(policy=changed))
    assert not updated.spec.pod_selector.match_labels and updated.metadata.uid == created.metadata.uid
    # The same version again: somebody (this very call) changed it since.
    err = await refused(platform, t, "UpdateNetworkPolicy", policy_pb2.UpdateNetworkPolicyRequest(policy=changed))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "resource version" in (err.details() or "")

    await call(platform, t, "DeleteNetworkPolicy", policy_pb2.PolicyRef(name="db"))
    err = await refused(platform, t, "GetNetworkPolicy", policy_pb2.PolicyRef(name="db"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await refused(platform, t, "DeleteNetworkPolicy", policy_pb2.PolicyRef(name="db"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_an_invalid_policy_names_its_field_and_stores_nothing(platform: Platform) -> None:
    t = await platform.tenant()
    block = {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}
    bad = netpol("bad", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": block}]}]})
    err = await refused(platform, t, "CreateNetworkPolicy", policy_pb2.CreateNetworkPolicyRequest(policy=bad))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("spec.ingress[0].from[0].ipBlock.except[0]:"), err.details()
    listed = await call(platform, t, "ListNetworkPolicies", policy_pb2.ListNetworkPoliciesRequest())
    assert not listed.policies


async def test_another_tenants_policy_is_not_found(platform: Platform) -> None:
    owner, other = await platform.tenant(), await platform.tenant()
    await call(platform, owner, "CreateNetworkPolicy", policy_pb2.CreateNetworkPolicyRequest(
        policy=netpol("mine", {"podSelector": {}})))  # fmt: skip
    for method, request in (
        ("GetNetworkPolicy", policy_pb2.PolicyRef(name="mine")),
        ("DeleteNetworkPolicy", policy_pb2.PolicyRef(name="mine")),
        ("UpdateNetworkPolicy", policy_pb2.UpdateNetworkPolicyRequest(policy=netpol("mine", {"podSelector": {}}))),
    ):
        err = await refused(platform, other, method, request)
        assert err.code() == grpc.StatusCode.NOT_FOUND, method
    assert not (await call(platform, other, "ListNetworkPolicies", policy_pb2.ListNetworkPoliciesRequest())).policies
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await policy_pb2_grpc.PolicyServiceStub(platform.channel).ListNetworkPolicies(
            policy_pb2.ListNetworkPoliciesRequest())  # fmt: skip
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_namespaces_carry_labels_and_their_name(platform: Platform) -> None:
    t = await platform.tenant()
    implicit = await call(platform, t, "GetNamespace", policy_pb2.NamespaceRef(name="web"))
    assert dict(implicit.metadata.labels) == {"kubernetes.io/metadata.name": "web"}
    ns = policy_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name="web", labels={"team": "red"}))
    put = await call(platform, t, "PutNamespace", policy_pb2.PutNamespaceRequest(namespace=ns))
    assert dict(put.metadata.labels) == {"team": "red", "kubernetes.io/metadata.name": "web"}
    listed = await call(platform, t, "ListNamespaces", policy_pb2.ListNamespacesRequest(
        options=meta_pb2.ListOptions(label_selector="team=red")))  # fmt: skip
    assert [n.metadata.name for n in listed.namespaces] == ["web"]
    wrong = policy_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name="web", labels={"kubernetes.io/metadata.name": "x"}))
    err = await refused(platform, t, "PutNamespace", policy_pb2.PutNamespaceRequest(namespace=wrong))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "kubernetes.io/metadata.name" in (err.details() or "")
    await call(platform, t, "DeleteNamespace", policy_pb2.NamespaceRef(name="web"))
    err = await refused(platform, t, "DeleteNamespace", policy_pb2.NamespaceRef(name="web"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deleted_tenants_policies_go_with_it(platform: Platform) -> None:
    t = await platform.tenant()
    await call(platform, t, "CreateNetworkPolicy", policy_pb2.CreateNetworkPolicyRequest(
        policy=netpol("deny", {"podSelector": {}})))  # fmt: skip
    ns = policy_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name="web", labels={"team": "red"}))
    await call(platform, t, "PutNamespace", policy_pb2.PutNamespaceRequest(namespace=ns))
    admin_md = (("authorization", f"Bearer {platform.admin_token}"),)
    await platform.admin.DeleteTenant(network_pb2.DeleteTenantRequest(name=t.name), metadata=admin_md)
    again = await platform.tenant(t.name)
    assert not (await call(platform, again, "ListNetworkPolicies", policy_pb2.ListNetworkPoliciesRequest())).policies
    assert not (await call(platform, again, "ListNamespaces", policy_pb2.ListNamespacesRequest())).namespaces
