"""Who may call what: the policy table and the interceptor that applies it.

Every call a pinet server takes passes through `Authorizer` first. The
caller's identity comes from its certificate (the SPIFFE URI SAN of a
certificate of the cluster CA, checked in the TLS handshake) or, on a
netagent's Unix socket, is the CNI plugin of that node: only root can open
that socket. A method with no rule is refused: a new RPC is closed until
someone writes down who may call it.

The network API's own methods are open at this layer: users have no
certificates, and the API checks their bearer tokens itself
(services/network/auth.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Counter

from pinet.pki.identity import Identity, IdentityError

log = logging.getLogger(__name__)

REFUSED = Counter(
    "pinet_grpc_refused_calls_total",
    "Calls refused before reaching a servicer: no identity, or one the policy does not allow.",
    ["method", "code"],
)


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str] = frozenset()
    #: Any caller, with or without an identity.
    anyone: bool = False
    #: Per-node roles (cni, netagent, lb) only from the server's own node.
    same_node: bool = False

    def describe(self) -> str:
        if self.anyone:
            return "anyone"
        names = ", ".join(sorted(self.roles)) or "no one"
        return f"{names} (of this node)" if self.same_node else names


def _roles(*names: str, same_node: bool = False) -> Rule:
    return Rule(frozenset(names), same_node=same_node)


ANYONE = Rule(anyone=True)
#: Operators and their monitoring.
OPERATORS = _roles("admin", "monitor")

#: "/package.Service/Method" (or "/package.Service/*") -> who may call it.
POLICY: dict[str, Rule] = {
    # Probes carry no certificate; reflection describes public APIs.
    "/grpc.health.v1.Health/*": ANYONE,
    "/grpc.reflection.v1alpha.ServerReflection/*": ANYONE,
    "/grpc.reflection.v1.ServerReflection/*": ANYONE,
    # Users: bearer tokens, checked by the API itself.
    "/pinet.network.v1.NetworkService/*": ANYONE,
    "/pinet.network.v1.AdminService/*": ANYONE,
    "/pinet.network.v1.PolicyService/*": ANYONE,
    # Addresses: only the network service hands them out and takes them back.
    "/pinet.ipam.v1.IpamService/Allocate": _roles("network", "admin"),
    "/pinet.ipam.v1.IpamService/Release": _roles("network", "admin"),
    "/pinet.ipam.v1.IpamService/EnsureNetworkPools": _roles("network", "admin"),
    "/pinet.ipam.v1.IpamService/GetAllocation": _roles("network", "admin", "monitor"),
    "/pinet.ipam.v1.IpamService/ListAllocations": _roles("network", "admin", "monitor"),
    "/pinet.ipam.v1.IpamService/GetPool": _roles("network", "admin", "monitor"),
    "/pinet.ipam.v1.IpamService/ListPools": _roles("network", "admin", "monitor"),
    "/pinet.ipam.v1.IpamService/CreatePool": _roles("admin"),
    # The network service removes a tenant's pools with the tenant.
    "/pinet.ipam.v1.IpamService/DeletePool": _roles("network", "admin"),
    # Wiring a pod: its own host's container runtime (the CNI plugin on the
    # agent's Unix socket), or an operator.
    "/pinet.netagent.v1.AgentService/Attach": _roles("cni", "admin", same_node=True),
    "/pinet.netagent.v1.AgentService/Detach": _roles("cni", "admin", same_node=True),
    "/pinet.netagent.v1.AgentService/Check": _roles("cni", "admin", same_node=True),
    "/pinet.netagent.v1.AgentService/List": _roles("cni", "admin", "monitor", same_node=True),
    "/pinet.lb.v1.LoadBalancerService/*": OPERATORS,
    "/pinet.dns.v1.DnsService/*": OPERATORS,
}


def rule_for(method: str, policy: dict[str, Rule] = POLICY) -> Rule | None:
    found = policy.get(method)
    if found is None:
        service, _, _ = method.rpartition("/")
        found = policy.get(f"{service}/*")
    return found


def decide(
    rule: Rule | None, caller: Identity | None, server_node: str, method: str
) -> tuple[grpc.StatusCode, str] | None:
    """None when the call may go on; otherwise the status to refuse it with."""
    if rule is None:
        who = caller or "a caller without a certificate"
        return grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}: no rule in the policy opens it"
    if rule.anyone:
        return None
    if caller is None:
        return grpc.StatusCode.UNAUTHENTICATED, f"{method} needs a client certificate of the cluster CA"
    if caller.role not in rule.roles:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller} may not call {method} (allowed: {rule.describe()})",
        )
    if rule.same_node and caller.node and caller.node != server_node:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller} may not call {method} on node {server_node}: only its own node's",
        )
    return None


def peer_identity(context: grpc.aio.ServicerContext[Any, Any], server_node: str) -> Identity | None:
    auth: dict[str, list[bytes]] = {k: list(v) for k, v in context.auth_context().items()}
    kind = auth.get("transport_security_type", [b""])[0]
    if kind == b"local":
        # The agent's Unix socket: whoever could open it is root on this node.
        return Identity("cni", server_node)
    spiffe = auth.get("peer_spiffe_id")
    if kind != b"ssl" or not spiffe:
        return None
    try:
        return Identity.parse(spiffe[0].decode())
    except (IdentityError, UnicodeDecodeError):
        return None


Behaviour = Callable[..., Any]


class Authorizer(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies POLICY to every call, before any servicer code runs."""

    def __init__(self, server_node: str, policy: dict[str, Rule] = POLICY) -> None:
        self.server_node = server_node
        self.policy = policy
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method = details.method
        handler = await continuation(details)
        if handler is None:
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(handler, method, rule_for(method, self.policy))
            self._wrapped[method] = wrapped
        return wrapped

    def _refusal(
        self, context: grpc.aio.ServicerContext[Any, Any], rule: Rule | None, method: str
    ) -> tuple[grpc.StatusCode, str] | None:
        refusal = decide(rule, peer_identity(context, self.server_node), self.server_node, method)
        if refusal is not None:
            REFUSED.labels(method, refusal[0].name).inc()
            log.warning("refused %s: %s", method, refusal[1])
        return refusal

    def _wrap(self, handler: Any, method: str, rule: Rule | None) -> Any:
        """The handler with the policy's check before it (as is for rules
        open to anyone). Two shapes of behaviour, each for a request or a
        request stream: one that returns, one that yields."""
        if rule is not None and rule.anyone:
            return handler
        refusal = self._refusal

        def returning(inner: Behaviour) -> Behaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if (denied := refusal(context, rule, method)) is not None:
                    await context.abort(*denied)
                return await inner(request, context)

            return checked

        def yielding(inner: Behaviour) -> Behaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if (denied := refusal(context, rule, method)) is not None:
                    await context.abort(*denied)
                async for item in inner(request, context):
                    yield item

            return checked

        kinds = (
            ("unary_unary", returning, grpc.unary_unary_rpc_method_handler),
            ("unary_stream", yielding, grpc.unary_stream_rpc_method_handler),
            ("stream_unary", returning, grpc.stream_unary_rpc_method_handler),
            ("stream_stream", yielding, grpc.stream_stream_rpc_method_handler),
        )
        for kind, guard, make in kinds:
            inner = getattr(handler, kind)
            if inner is not None:
                return make(guard(inner), handler.request_deserializer, handler.response_serializer)
        return handler
