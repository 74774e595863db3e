"""pinet.network.v1.PolicyService: network policies and the namespaces'
labels they select by. Both are plain objects of the tenant in etcd: the
netagents watch them and enforce them in each host's tenant router."""

from __future__ import annotations

from typing import Any

import grpc

from pinet.api.network.v1 import policy_pb2, policy_pb2_grpc
from pinet.etcd.keyspace import NAMESPACES, NETWORK_POLICIES
from pinet.etcd.txn import mod_revision_is, op_delete
from pinet.objects.meta import new_uid, now
from pinet.objects.store import for_storage, get, update
from pinet.runtime.errors import aborted, already_exists, failed_precondition, invalid, not_found
from pinet.runtime.servicer import unary
from services.network import policy_validation, validation
from services.network.api import tenant_filter, tenant_scope
from services.network.deps import Deps, namespace
from services.network.listing import list_objects

Context = grpc.aio.ServicerContext[Any, Any]


def _ref(ref: policy_pb2.PolicyRef) -> tuple[str, str]:
    if not ref.name:
        raise invalid("name: required")
    return namespace(ref.namespace), ref.name


def implicit_namespace(tenant: str, name: str) -> policy_pb2.Namespace:
    ns = policy_pb2.Namespace()
    ns.metadata.name, ns.metadata.tenant = name, tenant
    ns.metadata.labels[policy_validation.NAME_LABEL] = name
    return ns


def _check_version(current: Any, wanted: int, what: str) -> None:
    if wanted and current.metadata.resource_version != wanted:
        raise failed_precondition(
            f"{what} is at resource version {current.metadata.resource_version}, not {wanted}: "
            "read it again and reapply"
        )


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def _tenant(self, context: Context) -> str:
        return self.deps.tokens.caller(context).tenant

    # ------------------------------------------------------- policies

    @unary
    async def CreateNetworkPolicy(
        self, request: policy_pb2.CreateNetworkPolicyRequest, context: Context
    ) -> policy_pb2.NetworkPolicy:
        tenant = self._tenant(context)
        await self.deps.tenants.ensure(tenant)
        policy = policy_pb2.NetworkPolicy()
        policy.CopyFrom(request.policy)
        meta = policy.metadata
        meta.namespace = namespace(meta.namespace)
        policy_validation.network_policy(policy)
        policy_validation.apply_defaults(policy)
        meta.tenant, meta.uid = tenant, new_uid()
        meta.creation_timestamp.CopyFrom(now())
        meta.resource_version = 0
        meta.ClearField("deletion_timestamp")
        key = NETWORK_POLICIES.key(tenant, meta.namespace, meta.name)
        revision = await self.deps.etcd.create(key, NETWORK_POLICIES.encode(policy))
        if revision is None:
            raise already_exists(f"networkpolicy {meta.namespace}/{meta.name} already exists")
        meta.resource_version = revision
        return policy

    @unary
    async def GetNetworkPolicy(self, request: policy_pb2.PolicyRef, context: Context) -> policy_pb2.NetworkPolicy:
        tenant = self._tenant(context)
        ns, name = _ref(request)
        found = await get(self.deps.etcd, NETWORK_POLICIES, NETWORK_POLICIES.key(tenant, ns, name))
        if found is None:
            raise not_found(f"networkpolicy {ns}/{name} not found")
        return found[0]

    @unary
    async def ListNetworkPolicies(
        self, request: policy_pb2.ListNetworkPoliciesRequest, context: Context
    ) -> policy_pb2.ListNetworkPoliciesResponse:
        tenant = self._tenant(context)
        options = request.options
        items, meta = await list_objects(
            self.deps.etcd, NETWORK_POLICIES, tenant_scope(NETWORK_POLICIES, tenant, options.namespace), options,
            tenant_filter(options.namespace, options.label_selector),
        )  # fmt: skip
        return policy_pb2.ListNetworkPoliciesResponse(policies=items, list_meta=meta)

    @unary
    async def UpdateNetworkPolicy(
        self, request: policy_pb2.UpdateNetworkPolicyRequest, context: Context
    ) -> policy_pb2.NetworkPolicy:
        tenant = self._tenant(context)
        candidate = policy_pb2.NetworkPolicy()
        candidate.CopyFrom(request.policy)
        ns = candidate.metadata.namespace = namespace(candidate.metadata.namespace)
        name = candidate.metadata.name
        policy_validation.network_policy(candidate)
        policy_validation.apply_defaults(candidate)

        def mutate(current: policy_pb2.NetworkPolicy) -> bool:
            _check_version(current, request.policy.metadata.resource_version, f"networkpolicy {ns}/{name}")
            if current.spec == candidate.spec and dict(current.metadata.labels) == dict(candidate.metadata.labels):
                return False
            current.spec.CopyFrom(candidate.spec)
            current.metadata.labels.clear()
            current.metadata.labels.update(candidate.metadata.labels)
            return True

        updated = await update(self.deps.etcd, NETWORK_POLICIES, NETWORK_POLICIES.key(tenant, ns, name), mutate)
        if updated is None:
            raise not_found(f"networkpolicy {ns}/{name} not found")
        return updated

    @unary
    async def DeleteNetworkPolicy(
        self, request: policy_pb2.PolicyRef, context: Context
    ) -> policy_pb2.DeleteNetworkPolicyResponse:
        tenant = self._tenant(context)
        ns, name = _ref(request)
        key = NETWORK_POLICIES.key(tenant, ns, name)
        kv = await self.deps.etcd.get(key)
        if kv is None:
            raise not_found(f"networkpolicy {ns}/{name} not found")
        res = await self.deps.etcd.txn([mod_revision_is(key, kv.mod_revision)], [op_delete(key)])
        if not res.succeeded:
            raise aborted(f"networkpolicy {ns}/{name} changed while being deleted; retry")
        return policy_pb2.DeleteNetworkPolicyResponse()

    # ----------------------------------------------------- namespaces

    @unary
    async def PutNamespace(self, request: policy_pb2.PutNamespaceRequest, context: Context) -> policy_pb2.Namespace:
        tenant = self._tenant(context)
        await self.deps.tenants.ensure(tenant)
        ns = policy_pb2.Namespace()
        ns.CopyFrom(request.namespace)
        policy_validation.namespace(ns)
        meta = ns.metadata
        meta.labels[policy_validation.NAME_LABEL] = meta.name
        meta.tenant = tenant
        key = NAMESPACES.key(tenant, meta.name)
        for _ in range(5):
            found = await get(self.deps.etcd, NAMESPACES, key)
            if found is None:
                meta.uid = new_uid()
                meta.creation_timestamp.CopyFrom(now())
                stored = await self.deps.etcd.create(key, NAMESPACES.encode(for_storage(ns)))
            else:
                current = found[0]
                _check_version(current, request.namespace.metadata.resource_version, f"namespace {meta.name}")
                meta.uid = current.metadata.uid
                meta.creation_timestamp.CopyFrom(current.metadata.creation_timestamp)
                stored = await self.deps.etcd.update(key, NAMESPACES.encode(for_storage(ns)), found[1].mod_revision)
            if stored is not None:
                meta.resource_version = stored
                return ns
        raise aborted(f"namespace {meta.name} kept changing; retry")

    @unary
    async def GetNamespace(self, request: policy_pb2.NamespaceRef, context: Context) -> policy_pb2.Namespace:
        tenant = self._tenant(context)
        validation.dns1123_label(request.name, "name")
        found = await get(self.deps.etcd, NAMESPACES, NAMESPACES.key(tenant, request.name))
        return found[0] if found is not None else implicit_namespace(tenant, request.name)

    @unary
    async def ListNamespaces(
        self, request: policy_pb2.ListNamespacesRequest, context: Context
    ) -> policy_pb2.ListNamespacesResponse:
        """The namespaces with labels set; implicit ones are not listed."""
        tenant = self._tenant(context)
        items, meta = await list_objects(
            self.deps.etcd, NAMESPACES, NAMESPACES.scope_prefix(tenant), request.options,
            tenant_filter("", request.options.label_selector),
        )  # fmt: skip
        return policy_pb2.ListNamespacesResponse(namespaces=items, list_meta=meta)

    @unary
    async def DeleteNamespace(
        self, request: policy_pb2.NamespaceRef, context: Context
    ) -> policy_pb2.DeleteNamespaceResponse:
        tenant = self._tenant(context)
        validation.dns1123_label(request.name, "name")
        if not await self.deps.etcd.delete(NAMESPACES.key(tenant, request.name)):
            raise not_found(f"namespace {request.name} has no labels to delete")
        return policy_pb2.DeleteNamespaceResponse()
