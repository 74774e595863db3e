"""`pinet-cni`: a CNI 1.0 plugin that asks the local pinet agent to wire a
container's network namespace.

Network configuration (stdin):
    {"cniVersion": "1.0.0", "name": "pinet", "type": "pinet-cni",
     "socket": "/run/pinet/netagent.sock", "tenant": "default"}
The agent takes CNI calls only on its Unix socket, which only root can open;
that is what makes the caller this node's container runtime.
The pod is named by CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, optionally
PINET_TENANT); it must exist in pinet (created through the network API with
the annotation pinet.io/netns: runtime) and be scheduled on this node.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

SUPPORTED = ["0.4.0", "1.0.0"]
DEFAULT_SOCKET = "/run/pinet/netagent.sock"

# Error codes from the CNI specification.
INCOMPATIBLE_VERSION = 1
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
AGENT_REFUSED = 100


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def parse_args(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(";")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def read_config(raw: str) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CniError(DECODE_FAILURE, "network configuration is not valid JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = config.get("cniVersion")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported", f"supported: {SUPPORTED}")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise CniError(INVALID_CONFIG, f"network configuration: {key} is required")
    if "agent" in config:
        raise CniError(
            INVALID_CONFIG,
            "network configuration: 'agent' (a TCP address) is no longer taken: the agent takes CNI calls only "
            f"on its Unix socket; give 'socket' (default {DEFAULT_SOCKET})",
        )
    socket_path = config.get("socket", DEFAULT_SOCKET)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise CniError(INVALID_CONFIG, "network configuration: socket must be an absolute path")
    return config


def env(name: str, required: bool = True) -> str:
    value = os.environ.get(name, "")
    if required and not value:
        raise CniError(INVALID_ENV, f"{name} is not set")
    return value


def result(attachment: Any, version: str) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "interfaces": [{"name": attachment.interface_name, "mac": attachment.mac, "sandbox": attachment.netns_path}],
        "ips": [{"address": attachment.address_cidr, "gateway": attachment.gateway, "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": attachment.gateway}],
        "dns": {
            "nameservers": list(attachment.dns_servers),
            "search": list(attachment.dns_search),
            "options": list(attachment.dns_options),
        },
    }


def run(command: str, stdin: str) -> dict[str, Any] | None:
    if command == "VERSION":
        return {"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}
    if command not in ("ADD", "DEL", "CHECK"):
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION")
    config = read_config(stdin)
    env("CNI_CONTAINERID")
    ifname = env("CNI_IFNAME", required=command != "DEL") or "eth0"
    netns = env("CNI_NETNS", required=command == "ADD")
    args = parse_args(os.environ.get("CNI_ARGS", ""))
    tenant = args.get("PINET_TENANT") or config.get("tenant") or "default"
    namespace = args.get("K8S_POD_NAMESPACE", "default")
    name = args.get("K8S_POD_NAME", "")
    if not name:
        raise CniError(INVALID_ENV, "CNI_ARGS: K8S_POD_NAME is required to find the pod in pinet")

    import grpc

    from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc

    ref = netagent_pb2.PodRef(tenant=tenant, namespace=namespace, name=name)
    socket_path = str(config.get("socket", DEFAULT_SOCKET))
    channel = grpc.secure_channel(f"unix:{socket_path}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS))
    with channel:
        stub = netagent_pb2_grpc.AgentServiceStub(channel)
        try:
            if command == "ADD":
                resp = stub.Attach(
                    netagent_pb2.AttachRequest(pod=ref, netns_path=netns, interface_name=ifname), timeout=60
                )
                return result(resp.attachment, config["cniVersion"])
            if command == "DEL":
                stub.Detach(netagent_pb2.DetachRequest(pod=ref), timeout=60)
                return None
            check = stub.Check(netagent_pb2.CheckRequest(pod=ref), timeout=60)
            if not check.healthy:
                raise CniError(AGENT_REFUSED, "the pod's wiring is not healthy", "; ".join(check.problems))
            return None
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details() or ""  # type: ignore[attr-defined]
            if command == "DEL" and code == grpc.StatusCode.NOT_FOUND:
                return None  # DEL of something absent succeeds
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CniError(TRY_AGAIN_LATER, "the pinet agent is not reachable", details) from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise CniError(UNKNOWN_CONTAINER, details) from None
            raise CniError(AGENT_REFUSED, details, code.name) from None


def main() -> NoReturn:
    command = os.environ.get("CNI_COMMAND", "")
    try:
        stdin = sys.stdin.read() if command != "VERSION" else ""
        out = run(command, stdin)
        if out is not None:
            json.dump(out, sys.stdout)
            sys.stdout.write("\n")
        sys.exit(0)
    except CniError as exc:
        error = {"cniVersion": "1.0.0", "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        json.dump(error, sys.stdout)
        sys.stdout.write("\n")
        sys.exit(1)
    except OSError as exc:
        json.dump({"cniVersion": "1.0.0", "code": IO_FAILURE, "msg": str(exc)}, sys.stdout)
        sys.exit(1)
