"""`pi`'s connection to the network API: where its token and CA come from,
the TLS channel, and calls whose errors become one line for the user."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

from pinet.api.network.v1 import network_pb2, network_pb2_grpc, policy_pb2_grpc

REASONS = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthorized",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.ABORTED: "Conflict",
}


class CliError(Exception):
    pass


def fail(message: str) -> NoReturn:
    raise CliError(message)


def find_token(explicit: str) -> str:
    if explicit:
        return explicit
    if os.environ.get("PINET_TOKEN"):
        return os.environ["PINET_TOKEN"].strip()
    candidates = [os.environ.get("PINET_TOKEN_FILE", ""), ".pinet/token", str(Path.home() / ".config/pinet/token")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text().strip()
    fail(
        "no token: give --token, set PINET_TOKEN or PINET_TOKEN_FILE, "
        "or run in a checkout where scripts/up wrote .pinet/token"
    )


SYSTEM_TRUST = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def find_ca(explicit: str) -> Path | None:
    """The CA to verify the API with: --ca, PINET_CA, the local stack's
    .pinet/pki/ca.crt, ~/.config/pinet/ca.crt; None: the system's."""
    candidates = [explicit, os.environ.get("PINET_CA", "")]
    if explicit or candidates[1]:
        chosen = Path(explicit or candidates[1])
        if not chosen.is_file():
            fail(f"the CA file {chosen} does not exist")
        return chosen
    for candidate in (Path(".pinet/pki/ca.crt"), Path.home() / ".config/pinet/ca.crt"):
        if candidate.is_file():
            return candidate
    return None


def _is_loopback(server: str) -> bool:
    host = server.rpartition(":")[0].strip("[]") or server
    return host in ("localhost", "127.0.0.1", "::1")


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """TLS to the API, verified against the cluster CA (or the system's
    trust store). Plaintext only with --insecure, and then only to a
    loopback address: a bearer token never crosses a network in clear."""
    if args.insecure:
        if not _is_loopback(args.server):
            fail(f"--insecure sends your token in clear: only to a loopback address, not {args.server}")
        return grpc.insecure_channel(args.server)
    ca = find_ca(args.ca)
    if ca is not None:
        roots = ca.read_bytes()
    else:
        system = next((Path(p) for p in SYSTEM_TRUST if Path(p).is_file()), None)
        roots = system.read_bytes() if system is not None else None  # type: ignore[assignment]
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(roots), options=options)


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.server = args.server
        self.tls = not args.insecure
        self.channel = open_channel(args)
        self.api = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.admin = network_pb2_grpc.AdminServiceStub(self.channel)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        metadata = [("authorization", f"Bearer {find_token(args.token)}")]
        if args.as_tenant:
            metadata.append(("x-pinet-tenant", args.as_tenant))
        self.metadata = tuple(metadata)
        self.namespace = args.namespace
        self._probing = False

    def __call__(self, method: Callable[..., Any], request: Message) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=30)
        except grpc.RpcError as exc:
            if self._probing:
                raise
            self._report(exc)

    def found(self, lookup: Callable[[], object]) -> bool:
        """Whether lookup (a read through this client) finds its object; an
        error other than NotFound is reported as any other."""
        self._probing = True
        try:
            lookup()
            return True
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                self._report(exc)
            return False
        finally:
            self._probing = False

    def _report(self, exc: grpc.RpcError) -> NoReturn:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details = exc.details()  # type: ignore[attr-defined]
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and "ipam" not in str(details):
            if self.tls and ("handshake" in str(details).lower() or "ssl" in str(details).lower()):
                fail(f"the TLS handshake with {self.server} failed ({details}); check --ca / PINET_CA")
            fail(f"cannot reach the pinet API at {self.server} ({details}); is `scripts/up` running?")
        fail(f"Error from server ({REASONS.get(code, code.name)}): {details}")

    def ref(self, name: str) -> network_pb2.ObjectRef:
        return network_pb2.ObjectRef(namespace=self.namespace, name=name)
