"""Services: their virtual IP, node ports and floating-IP binding.

A service, its node-port claims and its floating-IP binding are written in
one transaction, which also checks that the floating IP is still the
tenant's and that no other binding of that address appeared since its ports
were checked for clashes.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2
from pinet.etcd.keyspace import ENDPOINTS, FIP_BINDINGS, NODE_PORTS, SERVICES
from pinet.etcd.txn import key_missing, mod_revision_is, op_delete, op_put, unchanged_since
from pinet.objects import protocol as transport
from pinet.objects.meta import new_uid, now
from pinet.objects.store import for_storage, get
from pinet.runtime.errors import ApiError, aborted, already_exists, failed_precondition, invalid, not_found
from services.ipam.pools import FLOATING_POOL
from services.ipam.store import address_key
from services.network import validation
from services.network.deps import Deps, namespace, service_pool

CLUSTER_IP = objects_pb2.SERVICE_TYPE_CLUSTER_IP
NODE_PORT = objects_pb2.SERVICE_TYPE_NODE_PORT
LOAD_BALANCER = objects_pb2.SERVICE_TYPE_LOAD_BALANCER
EXTERNAL_NAME = objects_pb2.SERVICE_TYPE_EXTERNAL_NAME
ATTEMPTS = 5

Pair = tuple[int, int]  # (protocol, port)


def node_port_key(pair: Pair) -> bytes:
    return NODE_PORTS.key(f"{transport.manifest_name(pair[0]).lower()}-{pair[1]}")


def binding_key(address: str, tenant: str, ns: str, name: str) -> bytes:
    return FIP_BINDINGS.key(address, f"{tenant}.{ns}.{name}")


def apply_defaults(svc: objects_pb2.Service) -> None:
    spec = svc.spec
    spec.type = spec.type or CLUSTER_IP
    spec.session_affinity = spec.session_affinity or objects_pb2.SESSION_AFFINITY_NONE
    if spec.session_affinity == objects_pb2.SESSION_AFFINITY_CLIENT_IP and not spec.session_affinity_timeout_seconds:
        spec.session_affinity_timeout_seconds = validation.DEFAULT_AFFINITY_TIMEOUT
    for port in spec.ports:
        port.protocol = transport.effective(port.protocol)
        if not port.target_port and not port.target_port_name:
            port.target_port = port.port


def has_cluster_ip(svc: objects_pb2.Service) -> bool:
    return svc.spec.type != EXTERNAL_NAME and svc.spec.cluster_ip != "None"


def node_ports_of(svc: objects_pb2.Service) -> dict[Pair, int]:
    """(protocol, service port) -> node port, for the ports that have one."""
    return {(transport.effective(p.protocol), p.port): p.node_port for p in svc.spec.ports if p.node_port}


@dataclass
class Plan:
    """The writes that go with a service, beside the service itself."""

    compares: list[Any] = field(default_factory=list)
    success: list[Any] = field(default_factory=list)
    new_node_ports: list[tuple[int, Pair]] = field(default_factory=list)  # (port index, claim)


def plan_node_ports(
    deps: Deps, tenant: str, ns: str, name: str, svc: objects_pb2.Service, held_before: dict[Pair, int], plan: Plan
) -> set[Pair]:
    """Give every port a node port (kept, requested or free) and plan claims
    for the new ones. Returns the claims the service will hold."""
    owned = {(proto, node_port) for (proto, _), node_port in held_before.items()}
    taken = {(c.protocol, c.port) for c in deps.view.node_ports.values()}
    held: set[Pair] = set()
    for i, port in enumerate(svc.spec.ports):
        proto = transport.effective(port.protocol)
        if not port.node_port:
            port.node_port = held_before.get((proto, port.port), 0) or free_node_port(taken | held, proto)
        pair: Pair = (int(proto), port.node_port)
        held.add(pair)
        if pair in owned:
            continue
        if pair in taken:
            raise already_exists(
                f"spec.ports[{i}].nodePort: {transport.manifest_name(proto)} {port.node_port} is already in use"
            )
        claim = objects_pb2.NodePortClaim(
            protocol=proto, port=port.node_port, tenant=tenant, namespace=ns, service=name
        )
        plan.compares.append(key_missing(node_port_key(pair)))
        plan.success.append(op_put(node_port_key(pair), NODE_PORTS.encode(claim)))
        plan.new_node_ports.append((i, pair))
    for pair in owned - held:
        plan.success.append(op_delete(node_port_key(pair)))
    return held


def free_node_port(taken: set[Pair], protocol: int) -> int:
    span = validation.NODE_PORT_MAX - validation.NODE_PORT_MIN + 1
    start = random.randrange(span)
    for offset in range(span):
        port = validation.NODE_PORT_MIN + (start + offset) % span
        if (protocol, port) not in taken:
            return port
    raise failed_precondition(
        f"every {transport.manifest_name(protocol)} node port ({validation.NODE_PORT_MIN}-32767) is in use"
    )


async def plan_binding(deps: Deps, tenant: str, ns: str, name: str, svc: objects_pb2.Service, plan: Plan) -> None:
    """The floating IP must be the tenant's and its ports must not clash with
    another service's on the same address."""
    address = svc.spec.load_balancer_ip
    kv = await deps.etcd.get(address_key(FLOATING_POOL, address))
    if kv is None or ipam_pb2.Allocation.FromString(kv.value).owner.tenant != tenant:
        raise failed_precondition(
            f"spec.loadBalancerIP: {address} is not one of your floating IPs (pi get fip; pi create fip)"
        )
    bindings, list_revision = await deps.etcd.list_prefix(FIP_BINDINGS.scope_prefix(address))
    wanted = {(transport.effective(p.protocol), p.port) for p in svc.spec.ports}
    for bkv in bindings:
        other = FIP_BINDINGS.decode(bkv.value)
        if (other.tenant, other.namespace, other.service) == (tenant, ns, name):
            continue
        for bound in other.ports:
            if (bound.protocol, bound.port) in wanted:
                raise already_exists(
                    f"spec.ports: {transport.manifest_name(bound.protocol)} port {bound.port} of floating IP {address} "
                    f"is already used by service {other.namespace}/{other.service}"
                )
    binding = objects_pb2.FloatingIPBinding(
        address=address, tenant=tenant, namespace=ns, service=name,
        ports=[objects_pb2.BoundPort(protocol=p, port=n) for p, n in sorted(wanted)],
    )  # fmt: skip
    plan.compares += [
        mod_revision_is(kv.key, kv.mod_revision),
        unchanged_since(FIP_BINDINGS.scope_prefix(address), list_revision),
    ]
    plan.success.append(op_put(binding_key(address, tenant, ns, name), FIP_BINDINGS.encode(binding)))


async def _explain_failure(deps: Deps, plan: Plan, svc: objects_pb2.Service, requested: set[int]) -> None:
    """After a failed transaction: raise if a node port the user asked for
    was taken meanwhile; otherwise the caller retries."""
    for i, pair in plan.new_node_ports:
        if i in requested and await deps.etcd.get(node_port_key(pair)) is not None:
            raise already_exists(
                f"spec.ports[{i}].nodePort: {transport.manifest_name(pair[0])} {pair[1]} is already in use"
            )


async def create_service(deps: Deps, tenant: str, svc: objects_pb2.Service) -> objects_pb2.Service:
    await deps.tenants.ensure(tenant)
    meta = svc.metadata
    meta.namespace = namespace(meta.namespace)
    validation.service(svc)
    apply_defaults(svc)
    ns, name = meta.namespace, meta.name
    key = SERVICES.key(tenant, ns, name)
    if await deps.etcd.get(key) is not None:
        raise already_exists(f"service {ns}/{name} already exists")
    meta.tenant, meta.uid = tenant, new_uid()
    meta.creation_timestamp.CopyFrom(now())
    meta.resource_version = 0
    svc.ClearField("status")
    requested = {i for i, p in enumerate(svc.spec.ports) if p.node_port}
    allocated = False
    try:
        if has_cluster_ip(svc):
            owner = ipam_pb2.Owner(
                tenant=tenant, kind=ipam_pb2.OWNER_KIND_SERVICE, handle=meta.uid, name=f"{ns}/{name}"
            )
            alloc = await deps.ipam.allocate(service_pool(tenant), owner, svc.spec.cluster_ip, field="spec.clusterIP")
            svc.spec.cluster_ip = alloc.address
            allocated = True
        for _ in range(ATTEMPTS):
            for i, port in enumerate(svc.spec.ports):
                if i not in requested:
                    port.node_port = 0
            plan = Plan()
            if svc.spec.type in (NODE_PORT, LOAD_BALANCER):
                plan_node_ports(deps, tenant, ns, name, svc, {}, plan)
            if svc.spec.type == LOAD_BALANCER:
                await plan_binding(deps, tenant, ns, name, svc, plan)
                svc.status.load_balancer_ingress_ip = svc.spec.load_balancer_ip
            res = await deps.etcd.txn(
                [key_missing(key), *plan.compares], [op_put(key, SERVICES.encode(svc)), *plan.success]
            )
            if res.succeeded:
                allocated = False  # the service owns it now
                await deps.view.services.wait_revision(res.revision, timeout=10)
                meta.resource_version = res.revision
                return svc
            if await deps.etcd.get(key) is not None:
                raise already_exists(f"service {ns}/{name} already exists")
            await _explain_failure(deps, plan, svc, requested)
        raise aborted(f"service {ns}/{name}: node ports or floating-IP bindings kept changing; retry")
    finally:
        if allocated:
            await deps.ipam.release_handle(service_pool(tenant), meta.uid, tenant)


async def get_service(deps: Deps, tenant: str, ns: str, name: str) -> objects_pb2.Service:
    found = await get(deps.etcd, SERVICES, SERVICES.key(tenant, namespace(ns), name))
    if found is None:
        raise not_found(f"service {namespace(ns)}/{name} not found")
    return found[0]


async def update_service(deps: Deps, tenant: str, change: objects_pb2.Service) -> objects_pb2.Service:
    ns, name = namespace(change.metadata.namespace), change.metadata.name
    key = SERVICES.key(tenant, ns, name)
    for _ in range(ATTEMPTS):
        found = await get(deps.etcd, SERVICES, key)
        if found is None:
            raise not_found(f"service {ns}/{name} not found")
        current, kv = found
        if change.metadata.resource_version and change.metadata.resource_version != kv.mod_revision:
            raise failed_precondition(
                f"service {ns}/{name} changed since resource version {change.metadata.resource_version}; read it again"
            )
        svc = objects_pb2.Service()
        svc.CopyFrom(change)
        svc.metadata.namespace = ns
        if not svc.spec.cluster_ip and has_cluster_ip(current):
            svc.spec.cluster_ip = current.spec.cluster_ip
        validation.service(svc)
        apply_defaults(svc)
        if has_cluster_ip(current) != has_cluster_ip(svc) or (
            has_cluster_ip(svc) and svc.spec.cluster_ip != current.spec.cluster_ip
        ):
            raise invalid("spec.clusterIP: immutable (and so is being headless or ExternalName); delete and create")
        old_fip = current.spec.load_balancer_ip if current.spec.type == LOAD_BALANCER else ""
        new_fip = svc.spec.load_balancer_ip if svc.spec.type == LOAD_BALANCER else ""
        if old_fip and new_fip and old_fip != new_fip:
            raise failed_precondition(
                f"spec.loadBalancerIP: service {ns}/{name} already uses floating IP {old_fip}; a service has at "
                "most one: remove it first (type ClusterIP or NodePort), then bind the other"
            )
        meta = svc.metadata
        labels, annotations = dict(meta.labels), dict(meta.annotations)
        meta.CopyFrom(current.metadata)
        meta.labels.clear()
        meta.labels.update(labels)
        meta.annotations.clear()
        meta.annotations.update(annotations)
        meta.resource_version = 0
        svc.ClearField("status")
        plan = Plan()
        held_before = node_ports_of(current) if current.spec.type in (NODE_PORT, LOAD_BALANCER) else {}
        requested = {i for i, p in enumerate(change.spec.ports) if p.node_port}
        if svc.spec.type in (NODE_PORT, LOAD_BALANCER):
            plan_node_ports(deps, tenant, ns, name, svc, held_before, plan)
        else:
            plan.success += [op_delete(node_port_key((proto, np))) for (proto, _), np in held_before.items()]
        if new_fip:
            await plan_binding(deps, tenant, ns, name, svc, plan)
            svc.status.load_balancer_ingress_ip = new_fip
        elif old_fip:
            plan.success.append(op_delete(binding_key(old_fip, tenant, ns, name)))
        res = await deps.etcd.txn(
            [mod_revision_is(key, kv.mod_revision), *plan.compares],
            [op_put(key, SERVICES.encode(for_storage(svc))), *plan.success],
        )
        if res.succeeded:
            await deps.view.services.wait_revision(res.revision, timeout=10)
            svc.metadata.resource_version = res.revision
            return svc
        await _explain_failure(deps, plan, svc, requested)
    raise aborted(f"service {ns}/{name} kept changing while being updated; retry")


async def delete_service(deps: Deps, tenant: str, ns: str, name: str) -> None:
    ns = namespace(ns)
    key = SERVICES.key(tenant, ns, name)
    for _ in range(ATTEMPTS):
        found = await get(deps.etcd, SERVICES, key)
        if found is None:
            raise not_found(f"service {ns}/{name} not found")
        svc, kv = found
        ops = [op_delete(key), op_delete(ENDPOINTS.key(tenant, ns, name))]
        if svc.spec.type in (NODE_PORT, LOAD_BALANCER):
            ops += [op_delete(node_port_key((proto, np))) for (proto, _), np in node_ports_of(svc).items()]
        if svc.spec.type == LOAD_BALANCER and svc.spec.load_balancer_ip:
            ops.append(op_delete(binding_key(svc.spec.load_balancer_ip, tenant, ns, name)))
        res = await deps.etcd.txn([mod_revision_is(key, kv.mod_revision)], ops)
        if not res.succeeded:
            continue
        if has_cluster_ip(svc):
            # If ipam cannot be reached, its garbage collector frees the
            # address once it sees the service gone.
            with contextlib.suppress(ApiError):
                await deps.ipam.release_handle(service_pool(tenant), svc.metadata.uid, tenant)
        return
    raise aborted(f"service {ns}/{name} kept changing while being deleted; retry")
