"""Pods and deployments."""

from __future__ import annotations

import contextlib
import secrets
import string

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.keyspace import DEPLOYMENTS, NODES, PODS
from pinet.etcd.txn import mod_revision_is, op_delete
from pinet.objects.meta import new_uid, now
from pinet.objects.store import get, update
from pinet.runtime.errors import ApiError, aborted, already_exists, failed_precondition, invalid, not_found
from services.network import validation
from services.network.deps import Deps, namespace, pod_pool
from services.network.endpoints import pod_ready
from services.network.scheduling import pick_node

# Pods a deployment made carry this annotation: "<deployment name>/<uid>".
CREATED_BY = "pinet.io/created-by-deployment"


def present(deps: Deps, pod: objects_pb2.Pod) -> objects_pb2.Pod:
    """Fill in what is derived at read time: readiness follows the node."""
    pod.status.ready = pod_ready(pod, deps.view.node_ready)
    if pod.status.phase == objects_pb2.POD_PHASE_RUNNING and not deps.view.node_ready(pod.spec.node_name):
        pod.status.phase = objects_pb2.POD_PHASE_UNKNOWN
    return pod


# A pod may ask for its address (as Calico's cni.projectcalico.org/ipAddrs):
# one free address of its tenant network, kept for the pod's life.
REQUESTED_ADDRESS = "pinet.io/ip-address"


async def create_pod(deps: Deps, tenant: str, pod: objects_pb2.Pod) -> objects_pb2.Pod:
    await deps.tenants.ensure(tenant)
    pod.metadata.namespace = namespace(pod.metadata.namespace)
    validation.pod(pod)
    ns, name = pod.metadata.namespace, pod.metadata.name
    key = PODS.key(tenant, ns, name)
    if await deps.etcd.get(key) is not None:
        raise already_exists(f"pod {ns}/{name} already exists")
    if pod.spec.node_name:
        node = deps.view.nodes.get(NODES.key(pod.spec.node_name))
        if node is None:
            raise invalid(f"spec.nodeName: node {pod.spec.node_name!r} does not exist (pi get nodes)")
    else:
        pod.spec.node_name = pick_node(deps.view.ready_nodes(), deps.view.pods_per_node)
        node = deps.view.nodes.get(NODES.key(pod.spec.node_name))
    pod.metadata.tenant = tenant
    pod.metadata.uid = new_uid()
    pod.metadata.creation_timestamp.CopyFrom(now())
    pod.metadata.resource_version = 0
    pod.ClearField("status")
    owner = ipam_pb2.Owner(
        tenant=tenant, kind=ipam_pb2.OWNER_KIND_POD, handle=pod.metadata.uid, name=f"{ns}/{name}",
        node=pod.spec.node_name,
    )  # fmt: skip
    requested = pod.metadata.annotations.get(REQUESTED_ADDRESS, "")
    if requested:
        validation.ipv4_address(requested, f"metadata.annotations[{REQUESTED_ADDRESS}]")
    # ipam refuses an address outside the network or taken, naming the field.
    alloc = await deps.ipam.allocate(pod_pool(tenant), owner, address=requested, field="status.podIP")
    pod.status.phase = objects_pb2.POD_PHASE_PENDING
    pod.status.pod_ip = alloc.address
    pod.status.host_ip = node.underlay_ip if node is not None else ""
    pod.status.message = f"waiting for node {pod.spec.node_name} to wire the network"
    revision = await deps.etcd.create(key, PODS.encode(pod))
    if revision is None:
        await deps.ipam.release_handle(pod_pool(tenant), pod.metadata.uid, tenant)
        raise already_exists(f"pod {ns}/{name} already exists")
    await deps.view.pods.wait_revision(revision, timeout=10)
    pod.metadata.resource_version = revision
    return present(deps, pod)


async def get_pod(deps: Deps, tenant: str, ns: str, name: str) -> objects_pb2.Pod:
    found = await get(deps.etcd, PODS, PODS.key(tenant, namespace(ns), name))
    if found is None:
        raise not_found(f"pod {namespace(ns)}/{name} not found")
    return present(deps, found[0])


async def update_pod(deps: Deps, tenant: str, pod: objects_pb2.Pod) -> objects_pb2.Pod:
    ns, name = namespace(pod.metadata.namespace), pod.metadata.name
    validation.labels(pod.metadata.labels, "metadata.labels")
    wanted_version = pod.metadata.resource_version

    def mutate(current: objects_pb2.Pod) -> bool:
        if wanted_version and current.metadata.resource_version != wanted_version:
            raise failed_precondition(f"pod {ns}/{name} changed since resource version {wanted_version}; read it again")
        current.metadata.labels.clear()
        current.metadata.labels.update(pod.metadata.labels)
        current.metadata.annotations.clear()
        current.metadata.annotations.update(pod.metadata.annotations)
        return True

    updated = await update(deps.etcd, PODS, PODS.key(tenant, ns, name), mutate)
    if updated is None:
        raise not_found(f"pod {ns}/{name} not found")
    return present(deps, updated)


async def delete_pod(deps: Deps, tenant: str, ns: str, name: str) -> None:
    ns = namespace(ns)
    key = PODS.key(tenant, ns, name)
    for _ in range(20):
        kv = await deps.etcd.get(key)
        if kv is None:
            raise not_found(f"pod {ns}/{name} not found")
        pod = PODS.decode(kv.value)
        if await deps.etcd.delete_if(key, kv.mod_revision):
            # The agent unwires it from the deletion event; the address is
            # free from now on (next-fit hands it out again only after the
            # whole pool has been used).
            await deps.ipam.release_handle(pod_pool(tenant), pod.metadata.uid, tenant)
            return
    raise aborted(f"pod {ns}/{name} kept changing; retry")


# ------------------------------------------------------------ deployments


def _random_suffix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))


def pod_from_template(deployment: objects_pb2.Deployment) -> objects_pb2.Pod:
    pod = objects_pb2.Pod()
    pod.metadata.CopyFrom(deployment.spec.template.metadata)
    pod.metadata.name = f"{deployment.metadata.name}-{_random_suffix()}"
    pod.metadata.namespace = deployment.metadata.namespace
    pod.metadata.annotations[CREATED_BY] = f"{deployment.metadata.name}/{deployment.metadata.uid}"
    pod.spec.CopyFrom(deployment.spec.template.spec)
    return pod


async def create_deployment(deps: Deps, tenant: str, deployment: objects_pb2.Deployment) -> objects_pb2.Deployment:
    await deps.tenants.ensure(tenant)
    deployment.metadata.namespace = namespace(deployment.metadata.namespace)
    validation.deployment(deployment)
    meta = deployment.metadata
    meta.tenant, meta.uid = tenant, new_uid()
    meta.creation_timestamp.CopyFrom(now())
    meta.resource_version = 0
    deployment.ClearField("status")
    key = DEPLOYMENTS.key(tenant, meta.namespace, meta.name)
    revision = await deps.etcd.create(key, DEPLOYMENTS.encode(deployment))
    if revision is None:
        raise already_exists(f"deployment {meta.namespace}/{meta.name} already exists")
    meta.resource_version = revision
    return deployment


async def get_deployment(deps: Deps, tenant: str, ns: str, name: str) -> objects_pb2.Deployment:
    found = await get(deps.etcd, DEPLOYMENTS, DEPLOYMENTS.key(tenant, namespace(ns), name))
    if found is None:
        raise not_found(f"deployment {namespace(ns)}/{name} not found")
    return found[0]


async def update_deployment(
    deps: Deps, tenant: str, ns: str, name: str, change: objects_pb2.Deployment | None, replicas: int | None
) -> objects_pb2.Deployment:
    ns = namespace(ns)
    if replicas is not None and replicas < 0:
        raise invalid(f"replicas: must not be negative, got {replicas}")

    def mutate(current: objects_pb2.Deployment) -> bool:
        if change is not None:
            candidate = objects_pb2.Deployment()
            candidate.CopyFrom(change)
            candidate.metadata.namespace = ns
            validation.deployment(candidate)
            if dict(candidate.spec.selector) != dict(current.spec.selector):
                raise invalid("spec.selector: immutable; delete and create the deployment to change it")
            current.spec.CopyFrom(candidate.spec)
            current.metadata.labels.clear()
            current.metadata.labels.update(candidate.metadata.labels)
        if replicas is not None:
            current.spec.replicas = replicas
        return True

    updated = await update(deps.etcd, DEPLOYMENTS, DEPLOYMENTS.key(tenant, ns, name), mutate)
    if updated is None:
        raise not_found(f"deployment {ns}/{name} not found")
    return updated


async def delete_deployment(deps: Deps, tenant: str, ns: str, name: str) -> None:
    ns = namespace(ns)
    found = await get(deps.etcd, DEPLOYMENTS, DEPLOYMENTS.key(tenant, ns, name))
    if found is None:
        raise not_found(f"deployment {ns}/{name} not found")
    deployment, kv = found
    res = await deps.etcd.txn([mod_revision_is(kv.key, kv.mod_revision)], [op_delete(kv.key)])
    if not res.succeeded:
        raise aborted(f"deployment {ns}/{name} changed; retry")
    marker = f"{name}/{deployment.metadata.uid}"
    for pod in list(deps.view.pods_by_scope.get((tenant, ns), {}).values()):
        if pod.metadata.annotations.get(CREATED_BY) == marker:
            with contextlib.suppress(ApiError):  # already gone
                await delete_pod(deps, tenant, ns, pod.metadata.name)
