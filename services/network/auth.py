"""Bearer tokens: issued by an admin, stored hashed, checked on every call."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import grpc

from pinet.api.network.v1 import objects_pb2
from pinet.etcd.client import Etcd
from pinet.etcd.informer import Informer
from pinet.etcd.keyspace import TOKENS
from pinet.objects.meta import now
from pinet.runtime.errors import permission_denied, unauthenticated

TOKEN_PREFIX = "pinet_"
# Admins may act as a tenant by naming it in this metadata key.
ACT_AS = "x-pinet-tenant"


@dataclass(frozen=True)
class Caller:
    tenant: str
    admin: bool


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenStore:
    def __init__(self, etcd: Etcd, informer: Informer[objects_pb2.TokenRecord]) -> None:
        """informer: the network service's informer of token records."""
        self.etcd = etcd
        self.informer = informer

    async def issue(self, tenant: str, admin: bool, description: str) -> tuple[str, objects_pb2.TokenRecord]:
        token = new_token()
        digest = token_hash(token)
        record = objects_pb2.TokenRecord(
            token_id=digest[:16], tenant=tenant, admin=admin, description=description, created_at=now()
        )
        rev = await self.etcd.create(TOKENS.key(digest), TOKENS.encode(record))
        assert rev is not None, "a fresh random token collided"
        await self.informer.wait_revision(rev, timeout=10)
        return token, record

    async def revoke(self, token_id: str) -> bool:
        for key, item in self.informer.items():
            if item.obj.token_id == token_id:
                return await self.etcd.delete(key) > 0
        return False

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated(
                "no bearer token: send 'authorization: Bearer <token>' (pi reads PINET_TOKEN or .pinet/token)"
            )
        record = self.informer.get(TOKENS.key(token_hash(token.strip())))
        if record is None:
            raise unauthenticated("the bearer token is not valid (revoked or never issued)")
        act_as = str(metadata.get(ACT_AS, ""))
        if act_as and act_as != record.tenant:
            if not record.admin:
                raise permission_denied(f"only admin tokens may act as another tenant ({ACT_AS})")
            return Caller(act_as, True)
        return Caller(record.tenant, record.admin)

    def admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        caller = self.caller(context)
        if not caller.admin:
            raise permission_denied("this call needs an admin token")
        return caller
