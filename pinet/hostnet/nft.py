"""nftables through libnftables (the library the `nft` command is made of),
called in-process inside a given network namespace.

One library call per change instead of one `nft` process: a transaction of a
few set elements takes about a millisecond, where starting `nft` in a
namespace costs several. Every call is one atomic transaction.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import entered, netns_identity

S = TypeVar("S")


class _Lib:
    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise KernelError(f"libnftables is missing ({exc}); install the nftables package") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self.lib = lib


NFT_CTX_OUTPUT_JSON = 1 << 4


@functools.cache
def _library() -> _Lib:
    return _Lib()


class Nft:
    """nftables inside one namespace ("" = the caller's)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._lib = _library().lib
        with entered(netns):
            # The context's netlink socket is made here, inside netns.
            self._ctx = self._lib.nft_ctx_new(0)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)

    def run(self, script: str) -> str:
        if not script.strip():
            return ""
        with entered(self.netns):
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode().strip()
            raise KernelError(f"nft in {self.netns or 'this namespace'}: {err.splitlines()[0] if err else rc}")
        return out

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """The objects `nft -j list <what>` prints; [] when absent."""
        self._lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON)
        try:
            out = self.run(f"list {what}")
        except KernelError as exc:
            if "No such file or directory" in str(exc):
                return []
            raise
        finally:
            self._lib.nft_ctx_output_set_flags(self._ctx, 0)
        objects: list[dict[str, Any]] = json.loads(out).get("nftables", []) if out.strip() else []
        return [o for o in objects if "metainfo" not in o]

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def element_key(value: Any) -> tuple[Any, ...]:
    """An element key or value from nft's JSON as a tuple."""
    if isinstance(value, dict) and "concat" in value:
        return tuple(value["concat"])
    return (value,)


NETLINK_NETFILTER = 12
NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 1


class Generation:
    """The nftables ruleset generation of one namespace: a number the kernel
    changes with every committed transaction, whoever made it. Asking for it
    is one small netlink round trip, so watching many namespaces for changes
    made by hand costs next to nothing until one happens."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        with entered(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.settimeout(2)
        self._seq = 0

    def read(self) -> int:
        self._seq += 1
        # nlmsghdr, then nfgenmsg (family AF_UNSPEC, version 0, resource 0).
        self._sock.send(struct.pack("=IHHII", 20, NFT_MSG_GETGEN, NLM_F_REQUEST, self._seq, 0) + b"\0\0\0\0")
        while True:
            data = self._sock.recv(4096)
            length, kind, _flags, seq = struct.unpack_from("=IHHI", data)
            if seq == self._seq:
                break
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, 16)
            raise KernelError(f"nftables generation in {self.netns or 'this namespace'}: {os.strerror(-errno)}")
        offset = 20
        while offset + 4 <= length:
            size, attr = struct.unpack_from("=HH", data, offset)
            if attr & 0x3FFF == NFTA_GEN_ID:
                return int(struct.unpack_from("!I", data, offset + 4)[0])
            offset += (size + 3) & ~3
        raise KernelError(f"nftables generation in {self.netns or 'this namespace'}: no id in the reply")

    def close(self) -> None:
        self._sock.close()


def listing_digest(objects: list[dict[str, Any]]) -> str:
    """A digest of a table's rules, chains and set definitions as the kernel
    lists them, without what changes on its own (handles, counter values,
    set elements): equal digests mean nobody edited the rules."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("handle", "elem", "packets", "bytes", "expires")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    text = json.dumps([strip(o) for o in objects], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


BASE_MARKER_PREFIX = "base-"


@dataclass(frozen=True)
class BaseRules:
    """The fixed part of a ruleset (tables, sets, maps, chains and their
    rules) as one script of idempotent adds and flushes, so applying it to a
    live table keeps every set element; and the name of an empty chain, added
    last, that carries the script's digest. Finding that chain in the kernel
    says this very base is in place, without comparing rule by rule."""

    marker: str
    script: str


def base_rules(body: Iterable[str], marker_table: str) -> BaseRules:
    text = "\n".join(body)
    marker = BASE_MARKER_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:12]
    return BaseRules(marker, f"{text}\nadd chain {marker_table} {marker}\n")


def is_base_marker(chain: str) -> bool:
    return chain.startswith(BASE_MARKER_PREFIX)


class PerNamespace(Generic[S]):
    """State kept per network namespace (an nftables context, what was last
    written there), made anew when a namespace of the same name was deleted
    and made again: the old state describes a namespace that is gone.
    "" is the caller's own namespace."""

    def __init__(self, make: Callable[[str], S], close: Callable[[S], None]) -> None:
        self._make = make
        self._close = close
        self._states: dict[str, tuple[int, S]] = {}

    def get(self, netns: str) -> S:
        """Raises KernelError (and forgets the state) when netns is gone."""
        try:
            identity = netns_identity(netns) if netns else 0
        except KernelError:
            self.forget(netns)
            raise
        known = self._states.get(netns)
        if known is not None and known[0] == identity:
            return known[1]
        self.forget(netns)
        state = self._make(netns)
        self._states[netns] = (identity, state)
        return state

    def peek(self, netns: str) -> S | None:
        """The state held, without asking the kernel whether it is current."""
        known = self._states.get(netns)
        return known[1] if known is not None else None

    def forget(self, netns: str) -> None:
        known = self._states.pop(netns, None)
        if known is not None:
            self._close(known[1])

    def items(self) -> Iterator[tuple[str, S]]:
        return ((netns, state) for netns, (_, state) in list(self._states.items()))

    def close(self) -> None:
        for netns in list(self._states):
            self.forget(netns)
