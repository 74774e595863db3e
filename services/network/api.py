"""The pinet.network.v1 servicers: authentication and request shapes; the
work happens in the *_api modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from pinet.api.common.v1 import meta_pb2
from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.etcd.keyspace import DEPLOYMENTS, ENDPOINTS, IPAM_ADDRESSES, NODE_LEASES, NODES, PODS, SERVICES, TENANTS
from pinet.objects.store import get
from pinet.runtime.errors import already_exists, invalid, not_found
from pinet.runtime.servicer import stream, unary
from services.ipam.pools import FLOATING_POOL
from services.network import fips_api, pods_api, selectors, services_api, validation, watch
from services.network.auth import Caller
from services.network.deps import Deps, namespace
from services.network.listing import list_objects

Context = grpc.aio.ServicerContext[Any, Any]


def tenant_filter(options_namespace: str, selector_text: str) -> Any:
    """A filter on tenant (by key scope), namespace and labels."""
    selector = selectors.parse(selector_text, "label_selector")

    def keep(obj: Any) -> bool:
        meta = obj.metadata
        if options_namespace and meta.namespace != options_namespace:
            return False
        return selector.matches(meta.labels)

    return keep


def tenant_scope(kind: Any, tenant: str, ns: str) -> bytes:
    if ns:
        validation.dns1123_label(ns, "options.namespace")
        return bytes(kind.scope_prefix(tenant, ns))
    return bytes(kind.scope_prefix(tenant))


def _ref(ref: network_pb2.ObjectRef) -> tuple[str, str]:
    if not ref.name:
        raise invalid("name: required")
    return namespace(ref.namespace), ref.name


class NetworkServicer(network_pb2_grpc.NetworkServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def caller(self, context: Context) -> Caller:
        return self.deps.tokens.caller(context)

    async def _list(self, kind: Any, caller: Caller, options: meta_pb2.ListOptions) -> tuple[list[Any], Any]:
        """One page of the caller's objects of kind, filtered as asked."""
        ns = options.namespace
        return await list_objects(
            self.deps.etcd,
            kind,
            tenant_scope(kind, caller.tenant, ns),
            options,
            tenant_filter(ns, options.label_selector),
        )

    def _watch(self, kind: Any, caller: Caller, request: meta_pb2.WatchOptions, make: Any) -> AsyncIterator[Any]:
        """The caller's objects of kind as a watch stream."""
        return watch.stream(
            self.deps.etcd, kind, tenant_scope(kind, caller.tenant, request.namespace), request.resource_version,
            tenant_filter(request.namespace, request.label_selector), make,
        )  # fmt: skip

    # ---------------------------------------------------------------- me

    @unary
    async def WhoAmI(self, request: network_pb2.WhoAmIRequest, context: Context) -> network_pb2.WhoAmIResponse:
        caller = self.caller(context)
        tenant = await self.deps.tenants.ensure(caller.tenant)
        return network_pb2.WhoAmIResponse(tenant=caller.tenant, admin=caller.admin, tenant_info=tenant)

    # ------------------------------------------------------------- nodes

    def _node(self, node: objects_pb2.Node) -> objects_pb2.Node:
        beat = self.deps.view.node_leases.get(NODE_LEASES.key(node.name))
        node.ready = beat is not None
        node.reason = "" if beat else "NodeLeaseExpired: the node's agent stopped heartbeating"
        if beat is not None:
            node.last_heartbeat.CopyFrom(beat.last_heartbeat)
        return node

    @unary
    async def GetNode(self, request: network_pb2.GetNodeRequest, context: Context) -> objects_pb2.Node:
        self.caller(context)
        found = await get(self.deps.etcd, NODES, NODES.key(request.name or "-"))
        if found is None:
            raise not_found(f"node {request.name!r} not found")
        return self._node(found[0])

    @unary
    async def ListNodes(self, request: network_pb2.ListNodesRequest, context: Context) -> network_pb2.ListNodesResponse:
        self.caller(context)
        selector = selectors.parse(request.options.label_selector, "options.label_selector")
        nodes, meta = await list_objects(
            self.deps.etcd, NODES, NODES.prefix, request.options, lambda n: selector.matches(n.labels)
        )
        return network_pb2.ListNodesResponse(nodes=[self._node(n) for n in nodes], list_meta=meta)

    @stream
    async def WatchNodes(
        self, request: meta_pb2.WatchOptions, context: Context
    ) -> AsyncIterator[network_pb2.WatchNodesResponse]:
        self.caller(context)
        selector = selectors.parse(request.label_selector, "label_selector")
        async for item in watch.stream(
            self.deps.etcd, NODES, NODES.prefix, request.resource_version,
            lambda n: selector.matches(n.labels),
            lambda t, n, rv: network_pb2.WatchNodesResponse(
                type=t, node=self._node(n) if n else None, resource_version=rv
            ),
        ):  # fmt: skip
            yield item

    # -------------------------------------------------------------- pods

    @unary
    async def CreatePod(self, request: network_pb2.CreatePodRequest, context: Context) -> objects_pb2.Pod:
        caller = self.caller(context)
        pod = objects_pb2.Pod()
        pod.CopyFrom(request.pod)
        return await pods_api.create_pod(self.deps, caller.tenant, pod)

    @unary
    async def GetPod(self, request: network_pb2.ObjectRef, context: Context) -> objects_pb2.Pod:
        caller = self.caller(context)
        return await pods_api.get_pod(self.deps, caller.tenant, *_ref(request))

    @unary
    async def ListPods(self, request: network_pb2.ListPodsRequest, context: Context) -> network_pb2.ListPodsResponse:
        items, meta = await self._list(PODS, self.caller(context), request.options)
        return network_pb2.ListPodsResponse(pods=[pods_api.present(self.deps, p) for p in items], list_meta=meta)

    @unary
    async def UpdatePod(self, request: network_pb2.UpdatePodRequest, context: Context) -> objects_pb2.Pod:
        caller = self.caller(context)
        return await pods_api.update_pod(self.deps, caller.tenant, request.pod)

    @unary
    async def DeletePod(self, request: network_pb2.ObjectRef, context: Context) -> network_pb2.DeleteResponse:
        caller = self.caller(context)
        await pods_api.delete_pod(self.deps, caller.tenant, *_ref(request))
        return network_pb2.DeleteResponse()

    @stream
    async def WatchPods(
        self, request: meta_pb2.WatchOptions, context: Context
    ) -> AsyncIterator[network_pb2.WatchPodsResponse]:
        async for item in self._watch(
            PODS,
            self.caller(context),
            request,
            lambda t, p, rv: network_pb2.WatchPodsResponse(
                type=t, pod=pods_api.present(self.deps, p) if p else None, resource_version=rv
            ),
        ):
            yield item

    # ------------------------------------------------------- deployments

    @unary
    async def CreateDeployment(
        self, request: network_pb2.CreateDeploymentRequest, context: Context
    ) -> objects_pb2.Deployment:
        caller = self.caller(context)
        deployment = objects_pb2.Deployment()
        deployment.CopyFrom(request.deployment)
        return await pods_api.create_deployment(self.deps, caller.tenant, deployment)

    @unary
    async def GetDeployment(self, request: network_pb2.ObjectRef, context: Context) -> objects_pb2.Deployment:
        caller = self.caller(context)
        return await pods_api.get_deployment(self.deps, caller.tenant, *_ref(request))

    @unary
    async def ListDeployments(
        self, request: network_pb2.ListDeploymentsRequest, context: Context
    ) -> network_pb2.ListDeploymentsResponse:
        items, meta = await self._list(DEPLOYMENTS, self.caller(context), request.options)
        return network_pb2.ListDeploymentsResponse(deployments=items, list_meta=meta)

    @unary
    async def UpdateDeployment(
        self, request: network_pb2.UpdateDeploymentRequest, context: Context
    ) -> objects_pb2.Deployment:
        caller = self.caller(context)
        meta = request.deployment.metadata
        return await pods_api.update_deployment(
            self.deps, caller.tenant, meta.namespace, meta.name, request.deployment, None
        )

    @unary
    async def ScaleDeployment(
        self, request: network_pb2.ScaleDeploymentRequest, context: Context
    ) -> objects_pb2.Deployment:
        caller = self.caller(context)
        ns, name = _ref(request.ref)
        return await pods_api.update_deployment(self.deps, caller.tenant, ns, name, None, request.replicas)

    @unary
    async def DeleteDeployment(self, request: network_pb2.ObjectRef, context: Context) -> network_pb2.DeleteResponse:
        caller = self.caller(context)
        await pods_api.delete_deployment(self.deps, caller.tenant, *_ref(request))
        return network_pb2.DeleteResponse()

    # ---------------------------------------------------------- services

    @unary
    async def CreateService(self, request: network_pb2.CreateServiceRequest, context: Context) -> objects_pb2.Service:
        caller = self.caller(context)
        svc = objects_pb2.Service()
        svc.CopyFrom(request.service)
        return await services_api.create_service(self.deps, caller.tenant, svc)

    @unary
    async def GetService(self, request: network_pb2.ObjectRef, context: Context) -> objects_pb2.Service:
        caller = self.caller(context)
        return await services_api.get_service(self.deps, caller.tenant, *_ref(request))

    @unary
    async def ListServices(
        self, request: network_pb2.ListServicesRequest, context: Context
    ) -> network_pb2.ListServicesResponse:
        items, meta = await self._list(SERVICES, self.caller(context), request.options)
        return network_pb2.ListServicesResponse(services=items, list_meta=meta)

    @unary
    async def UpdateService(self, request: network_pb2.UpdateServiceRequest, context: Context) -> objects_pb2.Service:
        caller = self.caller(context)
        if not request.service.metadata.name:
            raise invalid("service.metadata.name: required")
        return await services_api.update_service(self.deps, caller.tenant, request.service)

    @unary
    async def DeleteService(self, request: network_pb2.ObjectRef, context: Context) -> network_pb2.DeleteResponse:
        caller = self.caller(context)
        await services_api.delete_service(self.deps, caller.tenant, *_ref(request))
        return network_pb2.DeleteResponse()

    @stream
    async def WatchServices(
        self, request: meta_pb2.WatchOptions, context: Context
    ) -> AsyncIterator[network_pb2.WatchServicesResponse]:
        async for item in self._watch(
            SERVICES,
            self.caller(context),
            request,
            lambda t, s, rv: network_pb2.WatchServicesResponse(type=t, service=s, resource_version=rv),
        ):
            yield item

    # --------------------------------------------------------- endpoints

    @unary
    async def GetEndpoints(self, request: network_pb2.ObjectRef, context: Context) -> objects_pb2.Endpoints:
        caller = self.caller(context)
        ns, name = _ref(request)
        found = await get(self.deps.etcd, ENDPOINTS, ENDPOINTS.key(caller.tenant, ns, name))
        if found is None:
            if await self.deps.etcd.get(SERVICES.key(caller.tenant, ns, name)) is None:
                raise not_found(f"endpoints {ns}/{name} not found")
            empty = objects_pb2.Endpoints()  # the controller has not written them yet
            empty.metadata.name, empty.metadata.namespace, empty.metadata.tenant = name, ns, caller.tenant
            return empty
        return found[0]

    @unary
    async def ListEndpoints(
        self, request: network_pb2.ListEndpointsRequest, context: Context
    ) -> network_pb2.ListEndpointsResponse:
        items, meta = await self._list(ENDPOINTS, self.caller(context), request.options)
        return network_pb2.ListEndpointsResponse(endpoints=items, list_meta=meta)

    @stream
    async def WatchEndpoints(
        self, request: meta_pb2.WatchOptions, context: Context
    ) -> AsyncIterator[network_pb2.WatchEndpointsResponse]:
        async for item in self._watch(
            ENDPOINTS,
            self.caller(context),
            request,
            lambda t, e, rv: network_pb2.WatchEndpointsResponse(type=t, endpoints=e, resource_version=rv),
        ):
            yield item

    # ------------------------------------------------------ floating IPs

    @unary
    async def AllocateFloatingIP(
        self, request: network_pb2.AllocateFloatingIPRequest, context: Context
    ) -> objects_pb2.FloatingIP:
        caller = self.caller(context)
        return await fips_api.allocate(
            self.deps, caller.tenant, request.address, request.description, request.request_id
        )

    @unary
    async def GetFloatingIP(
        self, request: network_pb2.GetFloatingIPRequest, context: Context
    ) -> objects_pb2.FloatingIP:
        caller = self.caller(context)
        return await fips_api.get(self.deps, caller.tenant, request.address)

    @unary
    async def ListFloatingIPs(
        self, request: network_pb2.ListFloatingIPsRequest, context: Context
    ) -> network_pb2.ListFloatingIPsResponse:
        caller = self.caller(context)
        items = await fips_api.list_all(self.deps, caller.tenant)
        return network_pb2.ListFloatingIPsResponse(floating_ips=items)

    @unary
    async def ReleaseFloatingIP(
        self, request: network_pb2.ReleaseFloatingIPRequest, context: Context
    ) -> network_pb2.DeleteResponse:
        caller = self.caller(context)
        await fips_api.release(self.deps, caller.tenant, request.address)
        return network_pb2.DeleteResponse()

    @stream
    async def WatchFloatingIPs(
        self, request: meta_pb2.WatchOptions, context: Context
    ) -> AsyncIterator[network_pb2.WatchFloatingIPsResponse]:
        caller = self.caller(context)

        def make(
            t: meta_pb2.WatchEventType.ValueType, alloc: ipam_pb2.Allocation | None, rv: int
        ) -> network_pb2.WatchFloatingIPsResponse:
            fip = None
            if alloc is not None:
                fip = objects_pb2.FloatingIP(
                    address=alloc.address, tenant=alloc.owner.tenant, allocated_at=alloc.allocated_at,
                    description=alloc.owner.name, resource_version=rv,
                )  # fmt: skip
            return network_pb2.WatchFloatingIPsResponse(type=t, floating_ip=fip, resource_version=rv)

        async for item in watch.stream(
            self.deps.etcd, IPAM_ADDRESSES, IPAM_ADDRESSES.scope_prefix(FLOATING_POOL), request.resource_version,
            lambda a: a.owner.tenant == caller.tenant, make,
        ):  # fmt: skip
            yield item


class AdminServicer(network_pb2_grpc.AdminServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @unary
    async def CreateTenant(self, request: network_pb2.CreateTenantRequest, context: Context) -> objects_pb2.Tenant:
        self.deps.tokens.admin(context)
        validation.dns1123_label(request.name, "name")
        if self.deps.tenants.get(request.name) is not None:
            raise already_exists(f"tenant {request.name} already exists")
        return await self.deps.tenants.ensure(request.name, request.network)

    @unary
    async def GetTenant(self, request: network_pb2.GetTenantRequest, context: Context) -> objects_pb2.Tenant:
        self.deps.tokens.admin(context)
        tenant = self.deps.tenants.get(request.name) if request.name else None
        if tenant is None:
            raise not_found(f"tenant {request.name!r} not found")
        return tenant

    @unary
    async def ListTenants(
        self, request: network_pb2.ListTenantsRequest, context: Context
    ) -> network_pb2.ListTenantsResponse:
        self.deps.tokens.admin(context)
        items, meta = await list_objects(self.deps.etcd, TENANTS, TENANTS.prefix, request.options, lambda t: True)
        return network_pb2.ListTenantsResponse(tenants=items, list_meta=meta)

    @unary
    async def DeleteTenant(
        self, request: network_pb2.DeleteTenantRequest, context: Context
    ) -> network_pb2.DeleteTenantResponse:
        self.deps.tokens.admin(context)
        await self.deps.tenants.delete(request.name, self.deps.tokens)
        return network_pb2.DeleteTenantResponse()

    @unary
    async def IssueToken(
        self, request: network_pb2.IssueTokenRequest, context: Context
    ) -> network_pb2.IssueTokenResponse:
        self.deps.tokens.admin(context)
        await self.deps.tenants.ensure(request.tenant)
        token, record = await self.deps.tokens.issue(request.tenant, request.admin, request.description)
        return network_pb2.IssueTokenResponse(token=token, token_id=record.token_id)

    @unary
    async def RevokeToken(
        self, request: network_pb2.RevokeTokenRequest, context: Context
    ) -> network_pb2.RevokeTokenResponse:
        self.deps.tokens.admin(context)
        if not await self.deps.tokens.revoke(request.token_id):
            raise not_found(f"token {request.token_id!r} not found")
        return network_pb2.RevokeTokenResponse()
