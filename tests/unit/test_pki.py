"""The control plane's pure parts in-process: identities, the CA and its
renewals, the RPC policy (complete for every public method), etcd's roles
and the audit line's object."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest

from pinet.api.dns.v1 import dns_pb2
from pinet.api.ipam.v1 import ipam_pb2
from pinet.api.lb.v1 import lb_pb2
from pinet.api.netagent.v1 import netagent_pb2
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.etcd.keyspace import NODES, POD_NETWORK, PODS, ROOT, TOKENS
from pinet.etcd.rbac import grants_for, users
from pinet.pki import authority
from pinet.pki.identity import Identity, IdentityError, cluster_identities
from pinet.runtime.authz import POLICY, decide, rule_for
from services.network.audit import is_mutating, object_of


def test_identities_name_role_and_node() -> None:
    agent = Identity.parse("netagent/host-1")
    assert (agent.role, agent.node, agent.name) == ("netagent", "host-1", "netagent/host-1")
    assert agent.uri == "spiffe://pinet/netagent/host-1" and Identity.parse(agent.uri) == agent
    assert agent.dns_name == "host-1.netagent.pinet" and agent.file_stem == "netagent-host-1"
    assert Identity.for_service("ipam", "any-host") == Identity("ipam")
    for bad in ("nobody", "netagent", "netagent/Host_1", "ipam/host-1", "lb/"):
        with pytest.raises(IdentityError):
            Identity.parse(bad)
    names = {i.name for i in cluster_identities(["h1", "h2"])}
    assert {"network", "ipam", "dns", "admin", "monitor", "etcd", "root", "netagent/h2", "lb/h1"} <= names
    assert not any(n.startswith("cni") for n in names), "the CNI plugin has no certificate"


def test_the_ca_issues_renews_and_rotates(tmp_path: Path) -> None:
    ids = [Identity("network"), Identity("lb", "h1")]
    assert authority.ensure(tmp_path, ids) == ids
    assert authority.ensure(tmp_path, ids) == [], "current certificates are kept"
    info = authority.certificate_info((tmp_path / "lb-h1.crt").read_bytes())
    assert (
        info.identity == Identity("lb", "h1") and "h1.lb.pinet" in info.dns_names and "127.0.0.1" in info.ip_addresses
    )
    assert oct((tmp_path / "lb-h1.key").stat().st_mode & 0o777) == "0o600"
    ca = authority.Authority.load(tmp_path)
    soon = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=360)
    ca.issue_into(tmp_path, Identity("network"), days=365, not_before=soon)
    assert authority.ensure(tmp_path, ids) == [Identity("network")], "renewed within 30 days of expiry"
    foreign = authority.Authority.generate("someone else").issue(Identity("network"))
    authority.write_pair(tmp_path, "network", foreign.cert_pem, foreign.key_pem)
    assert authority.ensure(tmp_path, ids) == [Identity("network")], "a certificate of another CA is replaced"
    before = (tmp_path / "lb-h1.crt").read_bytes()
    assert authority.ensure(tmp_path, ids, rotate=True) == ids
    assert (tmp_path / "lb-h1.crt").read_bytes() != before
    other = ca.issue(Identity("dns"))
    assert not authority.pair_matches((tmp_path / "lb-h1.crt").read_bytes(), other.key_pem)
    assert authority.pair_matches(other.cert_pem, other.key_pem)


PUBLIC = [network_pb2, ipam_pb2, netagent_pb2, lb_pb2, dns_pb2]


def test_every_public_method_has_a_rule() -> None:
    for module in PUBLIC:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                name = f"/{service.full_name}/{method.name}"
                assert rule_for(name) is not None, f"{name} has no rule in pinet.runtime.authz.POLICY"
    assert all(key.startswith("/") for key in POLICY)


ATTACH = "/pinet.netagent.v1.AgentService/Attach"
ALLOCATE = "/pinet.ipam.v1.IpamService/Allocate"


@pytest.mark.parametrize(
    ("method", "caller", "node", "code"),
    [
        ("/grpc.health.v1.Health/Check", None, "h1", None),
        ("/pinet.network.v1.NetworkService/CreatePod", None, "h1", None),
        (ALLOCATE, None, "h1", grpc.StatusCode.UNAUTHENTICATED),
        (ALLOCATE, Identity("network"), "h1", None),
        (ALLOCATE, Identity("lb", "h1"), "h1", grpc.StatusCode.PERMISSION_DENIED),
        (ALLOCATE, Identity("dns"), "h1", grpc.StatusCode.PERMISSION_DENIED),
        (ATTACH, Identity("cni", "h1"), "h1", None),
        (ATTACH, Identity("cni", "h2"), "h1", grpc.StatusCode.PERMISSION_DENIED),
        (ATTACH, Identity("netagent", "h1"), "h1", grpc.StatusCode.PERMISSION_DENIED),
        (ATTACH, Identity("admin"), "h1", None),
        ("/pinet.lb.v1.LoadBalancerService/GetStatus", Identity("monitor"), "h1", None),
        ("/pinet.lb.v1.LoadBalancerService/GetStatus", Identity("network"), "h1", grpc.StatusCode.PERMISSION_DENIED),
        ("/pinet.ipam.v1.IpamService/NewMethod", Identity("admin"), "h1", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_the_policy(method: str, caller: Identity | None, node: str, code: grpc.StatusCode | None) -> None:
    refusal = decide(rule_for(method), caller, node, method)
    assert (refusal[0] if refusal else None) == code
    if refusal and caller is not None:
        assert str(caller) in refusal[1] and method in refusal[1], "the refusal names the identity and the call"


def test_etcd_roles_give_least_privilege() -> None:
    def writes(identity: Identity) -> set[bytes]:
        return {g.key for g in grants_for(identity) if g.write}

    def reads(identity: Identity) -> set[bytes]:
        return {g.key for g in grants_for(identity)}

    agent = Identity("netagent", "h1")
    assert writes(agent) == {NODES.key("h1"), b"/pinet/v1/nodeleases/h1", POD_NETWORK.scope_prefix("h1")}
    assert PODS.prefix in reads(agent) and TOKENS.prefix not in reads(agent)
    for reader in (Identity("lb", "h1"), Identity("dns"), Identity("monitor")):
        assert writes(reader) == set() and TOKENS.prefix not in reads(reader), reader
    assert TOKENS.prefix in writes(Identity("network")) and TOKENS.prefix not in reads(Identity("ipam"))
    assert writes(Identity("admin")) == {ROOT.encode()}
    assert {u.name for u in users(["h1"])} == {"network", "ipam", "dns", "monitor", "admin", "netagent/h1", "lb/h1"}


def test_audit_lines_name_the_object() -> None:
    pod = objects_pb2.Pod()
    pod.metadata.namespace, pod.metadata.name = "web", "nginx"
    assert object_of(network_pb2.CreatePodRequest(pod=pod)) == "web/nginx"
    assert object_of(network_pb2.ObjectRef(name="db")) == "default/db"
    assert object_of(network_pb2.ReleaseFloatingIPRequest(address="203.0.113.9")) == "203.0.113.9"
    assert object_of(network_pb2.IssueTokenRequest(tenant="t1")) == "t1"
    assert is_mutating("ScaleDeployment") and is_mutating("RevokeToken") and not is_mutating("WatchPods")
