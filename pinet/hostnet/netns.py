"""Network namespaces for the agents: entering one on the calling thread,
netlink sockets bound to one, and creating or removing named ones.

Sockets are made by entering the namespace on the calling thread only for
the moment of creation; pyroute2's NetNS would fork a helper instead, and
forking a process that runs gRPC threads is not safe.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute

from pinet.hostnet.command import KernelError, run

NETNS_RUN = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(name_or_path: str) -> str:
    if name_or_path.startswith("/"):
        return name_or_path
    return os.path.join(str(NETNS_RUN), name_or_path)


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body on this thread inside netns ("" = stay where we are)."""
    if not netns:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(netns_path(netns), os.O_RDONLY)
        except FileNotFoundError:
            raise KernelError(f"namespace {netns} does not exist") from None
        try:
            setns(target)
            try:
                yield
            finally:
                setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def write_sysctl(netns: str, name: str, value: str) -> bool:
    """Set a sysctl inside netns; False when the kernel lacks it."""
    path = "/proc/sys/" + name.replace(".", "/")
    with entered(netns):
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    return True
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            return False
    return True


def open_netlink(netns: str) -> IPRoute:
    """A netlink socket inside netns (a name under /run/netns or a path)."""
    with entered(netns):
        return IPRoute()


def netns_identity(name: str) -> int:
    """Changes when a namespace of that name is deleted and made again."""
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        raise KernelError(f"namespace {name} does not exist") from None


def list_netns() -> set[str]:
    try:
        return set(os.listdir(NETNS_RUN))
    except FileNotFoundError:
        return set()


def create_netns(name: str) -> None:
    run(["ip", "netns", "add", name])


def remove_netns(name: str) -> None:
    if name in list_netns():
        run(["ip", "netns", "del", name])


def add_host_netns_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host-netns",
        required=True,
        help="network namespace that plays this host; 'root' for the machine's own (production). "
        "Required, so that nothing lands in the root namespace by accident",
    )


def host_netns(value: str) -> str:
    """The --host-netns value as a namespace name ("" = the root one)."""
    return "" if value == "root" else value
