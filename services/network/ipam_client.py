"""The network service's calls to ipam, with ipam's errors passed on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.pki.identity import Identity
from pinet.runtime.errors import ApiError
from pinet.runtime.tls import RetiredChannels, Tls, aio_channel

if TYPE_CHECKING:
    from pinet.api.ipam.v1.ipam_pb2_grpc import IpamServiceAsyncStub


class IpamClient:
    def __init__(self, address: str, tls: Tls | None) -> None:
        self.address = address
        self.tls = tls
        self.channel = aio_channel(tls, address, Identity("ipam"))
        self.stub: IpamServiceAsyncStub = ipam_pb2_grpc.IpamServiceStub(self.channel)
        self._retired = RetiredChannels()

    async def reopen(self) -> None:
        """A new channel with the TLS files as they are now (a rotation)."""
        self._retired.retire(self.channel)
        self.channel = aio_channel(self.tls, self.address, Identity("ipam"))
        self.stub = ipam_pb2_grpc.IpamServiceStub(self.channel)

    async def close(self) -> None:
        await self._retired.close_now()
        await self.channel.close(None)

    async def call(self, method: str, request: Any, field: str = "") -> Any:
        """Call an ipam method; its errors become ApiErrors with the same
        code, the message prefixed with the caller's field when given."""
        try:
            return await getattr(self.stub, method)(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or code.name
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ApiError(
                    grpc.StatusCode.UNAVAILABLE, f"address management (ipam) is unavailable: {details}"
                ) from None
            raise ApiError(code, f"{field}: {details}" if field else details) from None

    async def allocate(
        self, pool: str, owner: ipam_pb2.Owner, address: str = "", field: str = ""
    ) -> ipam_pb2.Allocation:
        resp = await self.call("Allocate", ipam_pb2.AllocateRequest(pool=pool, owner=owner, address=address), field)
        alloc: ipam_pb2.Allocation = resp.allocation
        return alloc

    async def release_handle(self, pool: str, handle: str, tenant: str) -> None:
        await self.call("Release", ipam_pb2.ReleaseRequest(pool=pool, handle=handle, tenant=tenant))
