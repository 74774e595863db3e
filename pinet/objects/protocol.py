"""A port's transport protocol: the API's enum, where UNSPECIFIED means TCP
(Kubernetes' default), and its two spellings, the manifests' "TCP"/"UDP"
and the kernel's "tcp"/"udp"."""

from __future__ import annotations

from pinet.api.common.v1 import meta_pb2

TCP = meta_pb2.PROTOCOL_TCP
UDP = meta_pb2.PROTOCOL_UDP
KNOWN = (TCP, UDP)
_BY_MANIFEST: dict[str, meta_pb2.Protocol.ValueType] = {"TCP": TCP, "UDP": UDP}


def effective(value: meta_pb2.Protocol.ValueType) -> meta_pb2.Protocol.ValueType:
    """The protocol a port uses: TCP when none is given."""
    return value or TCP


def manifest_name(value: int) -> str:
    return "UDP" if value == UDP else "TCP"


def kernel_name(value: int) -> str:
    return "udp" if value == UDP else "tcp"


def from_manifest(text: str) -> meta_pb2.Protocol.ValueType | None:
    """None for anything but TCP and UDP."""
    return _BY_MANIFEST.get(text)


def from_kernel(text: str) -> meta_pb2.Protocol.ValueType:
    return UDP if text == "udp" else TCP if text == "tcp" else meta_pb2.PROTOCOL_UNSPECIFIED
