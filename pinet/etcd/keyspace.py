"""The typed keyspace: where each kind of object lives in etcd.

Every value is the protobuf encoding of the kind's API message; keys are
`/pinet/v1/<kind>/<scope...>/<name>` with each part free of '/'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.network.v1 import objects_pb2, policy_pb2

ROOT = "/pinet/v1/"

M = TypeVar("M", bound=Message)


class KeyspaceError(ValueError):
    pass


@dataclass(frozen=True)
class Kind(Generic[M]):
    """A kind of object stored under one prefix, scoped by `scope` key parts
    (for example tenant and namespace) before the object's name."""

    name: str
    message: type[M]
    scope: tuple[str, ...] = ()

    @property
    def prefix(self) -> bytes:
        return f"{ROOT}{self.name}/".encode()

    def key(self, *parts: str) -> bytes:
        if len(parts) != len(self.scope) + 1:
            raise KeyspaceError(f"{self.name} key needs {(*self.scope, 'name')}, got {parts}")
        return self.prefix + "/".join(_check_part(p) for p in parts).encode()

    def scope_prefix(self, *parts: str) -> bytes:
        """Prefix selecting every object inside the first len(parts) scopes."""
        if len(parts) > len(self.scope):
            raise KeyspaceError(f"{self.name} has scopes {self.scope}, got {parts}")
        if not parts:
            return self.prefix
        return self.prefix + "".join(_check_part(p) + "/" for p in parts).encode()

    def parts(self, key: bytes) -> tuple[str, ...]:
        """The scope parts and name of a key of this kind."""
        if not key.startswith(self.prefix):
            raise KeyspaceError(f"{key!r} is not a {self.name} key")
        parts = tuple(key[len(self.prefix) :].decode().split("/"))
        if len(parts) != len(self.scope) + 1:
            raise KeyspaceError(f"{key!r} does not have the shape of a {self.name} key")
        return parts

    def encode(self, obj: M) -> bytes:
        return obj.SerializeToString(deterministic=True)

    def decode(self, data: bytes) -> M:
        obj = self.message()
        try:
            obj.ParseFromString(data)
        except DecodeError as exc:
            raise KeyspaceError(f"undecodable {self.name} value: {exc}") from exc
        return obj


def _check_part(part: str) -> str:
    if not part or "/" in part or part in (".", ".."):
        raise KeyspaceError(f"invalid key part {part!r}")
    return part


TENANTS = Kind("tenants", objects_pb2.Tenant)
NODES = Kind("nodes", objects_pb2.Node)
PODS = Kind("pods", objects_pb2.Pod, ("tenant", "namespace"))
DEPLOYMENTS = Kind("deployments", objects_pb2.Deployment, ("tenant", "namespace"))
SERVICES = Kind("services", objects_pb2.Service, ("tenant", "namespace"))
ENDPOINTS = Kind("endpoints", objects_pb2.Endpoints, ("tenant", "namespace"))
NETWORK_POLICIES = Kind("networkpolicies", policy_pb2.NetworkPolicy, ("tenant", "namespace"))
# A namespace's labels (namespaces themselves exist implicitly).
NAMESPACES = Kind("namespaces", policy_pb2.Namespace, ("tenant",))
# Heartbeat of a node's agent: the key lives only while the agent's lease
# does, so its disappearance means the host stopped answering.
NODE_LEASES = Kind("nodeleases", objects_pb2.Node)
# One key per service using a floating IP: name "<tenant>.<namespace>.<service>".
FIP_BINDINGS = Kind("fipbindings", objects_pb2.FloatingIPBinding, ("address",))
IPAM_POOLS = Kind("ipam/pools", ipam_pb2.Pool)
# One key per allocated address: the claim that makes an address unique.
IPAM_ADDRESSES = Kind("ipam/addresses", ipam_pb2.Allocation, ("pool",))
# One key per owner handle, holding the same allocation: makes retries
# idempotent and lets release-by-owner find the address without a scan.
IPAM_HANDLES = Kind("ipam/handles", ipam_pb2.Allocation, ("pool",))

# What a node's agent reports of the pods it wired, one key per pod uid
# under the node: an agent may write only its own node's keys, and the
# network service copies each report into the pod's status.
POD_NETWORK = Kind("podnetwork", objects_pb2.Pod, ("node",))

TOKENS = Kind("tokens", objects_pb2.TokenRecord)
NODE_PORTS = Kind("nodeports", objects_pb2.NodePortClaim)
VNIS = Kind("vnis", objects_pb2.VniClaim)

LEADER_PREFIX = f"{ROOT}leader/"


def leader_key(name: str) -> bytes:
    return f"{LEADER_PREFIX}{_check_part(name)}".encode()
