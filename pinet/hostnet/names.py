"""The host-network contract: names and addresses derived from IDs (pure
logic), shared by the netagent that makes them, the lb and the dns that
find them.

Everything here is a function of stable identifiers (node name, VNI, pod
uid, pod IP), so that an agent restarted with an empty memory finds the same
names in the kernel, and every host computes the same MAC for a pod.
"""

from __future__ import annotations

import hashlib
import ipaddress

IFNAMSIZ = 15
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
TRANSIT_NET = ipaddress.IPv4Network("100.64.0.0/10")
FIRST_VNI = 4096
ROUTER_BRIDGE = "br0"
ROUTER_VXLAN = "vx0"
ROUTER_UPLINK = "up0"
# nftables tables ("family name"), each written by one service only: the
# netagent's isolation on the host and in each router, the lb's translation
# in each router and on the host (the same name in different namespaces).
AGENT_HOST_TABLE = "ip pinet-host"
AGENT_ROUTER_TABLE = "ip pinet"
AGENT_BRIDGE_TABLE = "bridge pinet"
LB_TABLE = "ip pinet-lb"
# The tenant's network policies in its router (services/netagent/policy_rules.py).
POLICY_TABLE = "ip pinet-policy"
# Addresses 1 to 9 of a tenant network are the platform's (gateway, DNS, spares;
# the ipam's PLATFORM_RESERVED_COUNT).
PLATFORM_RESERVED = 9


def netns_prefix(node: str) -> str:
    """Every namespace of this node's agent starts with this."""
    return f"pinet-{node.removeprefix('pinet-')}-"


def router_netns(node: str, vni: int) -> str:
    return f"{netns_prefix(node)}r{vni}"


def pod_netns(node: str, uid: str) -> str:
    return f"{netns_prefix(node)}p{short(uid, 12)}"


def router_vni(node: str, netns: str) -> int | None:
    """The VNI of node's router namespace called netns; None for any other
    name (a pod's namespace, another node's router, a stranger's)."""
    rest = netns.removeprefix(netns_prefix(node))
    if rest == netns or not rest.startswith("r") or not rest[1:].isdigit():
        return None
    return int(rest[1:])


def is_pod_netns(node: str, netns: str) -> bool:
    """Whether netns is named as one of node's agent-made pod namespaces."""
    rest = netns.removeprefix(netns_prefix(node))
    return rest != netns and rest.startswith("p")


def short(ident: str, length: int) -> str:
    """A stable hex digest of ident; uids are random, so 12 hex digits (48
    bits) make a clash among a host's pods vanishingly unlikely, and the
    agent still checks the full uid kept in each link's alias."""
    return hashlib.sha256(ident.encode()).hexdigest()[:length]


def pod_host_ifname(uid: str) -> str:
    """The router-side end of a pod's veth (inside the router namespace)."""
    return f"pv{short(uid, 12)}"[:IFNAMSIZ]


def uplink_host_ifname(vni: int) -> str:
    """The host-side end of a router's uplink (inside the host namespace)."""
    return f"pr{vni}"[:IFNAMSIZ]


def vxlan_staging_ifname(vni: int) -> str:
    """The VXLAN device's name in the host namespace, before it moves."""
    return f"pvx{vni}"[:IFNAMSIZ]


def pod_mac(ip: str) -> str:
    """A locally administered MAC carrying the pod IP, the same on every host,
    so remote hosts can program forwarding entries from etcd alone."""
    octets = ipaddress.IPv4Address(ip).packed
    return "02:70:" + ":".join(f"{b:02x}" for b in octets)


def router_mac(node: str, vni: int) -> str:
    digest = hashlib.sha256(f"{node}/{vni}".encode()).digest()
    return "02:72:" + ":".join(f"{b:02x}" for b in digest[:4])


def transit(vni: int) -> tuple[str, str]:
    """(host side, router side) addresses of a router's uplink: one /30 of
    100.64.0.0/10 per VNI, the same on every host (each host has its own
    copy of the link)."""
    index = vni - FIRST_VNI if vni >= FIRST_VNI else vni
    base = int(TRANSIT_NET.network_address) + 4 * (index % (TRANSIT_NET.num_addresses // 4))
    return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))


ROUTER_IDENTITY_NET = ipaddress.IPv4Network("198.18.0.0/15")


def router_identity(underlay_ip: str) -> str:
    """The address a host's tenant routers translate outside traffic to when
    they send it to a pod on another host, so that the pod's reply (sent to
    its own router) is passed back over the VXLAN to the router that
    translated it. Taken from 198.18.0.0/15 (reserved for benchmarking, used
    by nobody on the internet) plus the low 17 bits of the host's underlay
    address: unique while the hosts share a /15 underlay. Not the underlay
    address itself: hosts are also clients, and their replies must go out."""
    low = int(ipaddress.IPv4Address(underlay_ip)) & (ROUTER_IDENTITY_NET.num_addresses - 1)
    return str(ROUTER_IDENTITY_NET.network_address + low)


def pod_mtu(underlay_mtu: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD


def resolv_conf(dns_ip: str, namespace: str, zone: str = "cluster.local") -> str:
    return f"nameserver {dns_ip}\nsearch {namespace}.svc.{zone} svc.{zone} {zone}\noptions ndots:5\n"
