"""Service identities: who a certificate (or a local socket) speaks for.

An identity is a role and, for the services that run on every host, the
node: `network`, `ipam`, `dns`, `netagent/host-1`, `lb/host-1`, `admin`.
A certificate carries it twice, so that any TLS stack can read it: as its
subject common name (etcd maps that to a user name) and as a SPIFFE-style
URI SAN `spiffe://pinet/<identity>`. Its DNS name `<identity>.pinet`
(`host-1.netagent.pinet`) is what clients verify when they connect to a
service, so a certificate of one service cannot impersonate another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRUST_DOMAIN = "pinet"

#: Roles with one identity per cluster.
CLUSTER_ROLES = ("network", "ipam", "dns", "admin", "monitor")
#: Roles with one identity per node.
NODE_ROLES = ("netagent", "lb", "cni")
#: The etcd server's own certificate, and etcd's `root` user, which only
#: the operator's tools use to manage etcd's users and roles.
ETCD_ROLES = ("etcd", "root")
ROLES = CLUSTER_ROLES + NODE_ROLES + ETCD_ROLES

_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class IdentityError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Identity:
    role: str
    node: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise IdentityError(f"unknown role {self.role!r} (one of {', '.join(ROLES)})")
        if self.role in NODE_ROLES:
            if not _NODE_NAME.match(self.node):
                raise IdentityError(
                    f"{self.role} needs a node name (lowercase letters, digits, '-'), got {self.node!r}"
                )
        elif self.node:
            raise IdentityError(f"{self.role} is one per cluster and takes no node (got {self.node!r})")

    @classmethod
    def parse(cls, text: str) -> Identity:
        """'netagent/host-1' or 'network' (the common name), or the URI form."""
        if text.startswith(f"spiffe://{TRUST_DOMAIN}/"):
            text = text[len(f"spiffe://{TRUST_DOMAIN}/") :]
        role, _, node = text.partition("/")
        return cls(role, node)

    @classmethod
    def for_service(cls, role: str, node: str) -> Identity:
        """The identity a service of this role runs as on this node."""
        return cls(role, node if role in NODE_ROLES else "")

    @property
    def name(self) -> str:
        return f"{self.role}/{self.node}" if self.node else self.role

    @property
    def uri(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/{self.name}"

    @property
    def dns_name(self) -> str:
        return f"{self.node}.{self.role}.{TRUST_DOMAIN}" if self.node else f"{self.role}.{TRUST_DOMAIN}"

    @property
    def file_stem(self) -> str:
        """Its files in a PKI directory: <stem>.crt and <stem>.key."""
        return f"{self.role}-{self.node}" if self.node else self.role

    def __str__(self) -> str:
        return self.name


def cluster_identities(nodes: list[str] | tuple[str, ...]) -> list[Identity]:
    """Every identity a cluster with these nodes needs a certificate for
    (the CNI plugin has none: it reaches its agent over a local socket)."""
    found = [Identity(role) for role in CLUSTER_ROLES + ETCD_ROLES]
    for node in nodes:
        found += [Identity("netagent", node), Identity("lb", node)]
    return found
