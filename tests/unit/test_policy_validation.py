"""NetworkPolicy and Namespace validation and the manifest conversion, as
tables: every rejection names the field at fault."""

from __future__ import annotations

from typing import Any

import pytest

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import policy_pb2
from pinet.cli import manifests
from pinet.cli.policy_manifests import PolicyManifestError, parse_network_policy
from pinet.runtime.errors import ApiError
from services.network import policy_validation


def policy(spec: dict[str, Any], name: str = "p") -> policy_pb2.NetworkPolicy:
    return parse_network_policy({"spec": spec}, meta_pb2.ObjectMeta(name=name, namespace="x"), "test")


VALID = [
    {"podSelector": {}},
    {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 5432}]}],
    },
    {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}]},
    {
        "podSelector": {},
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]
                        },
                        "podSelector": {},
                    }
                ]
            }
        ],
    },
    {
        "podSelector": {},
        "ingress": [{"ports": [{"protocol": "UDP", "port": 53}, {"port": "http"}, {"port": 8000, "endPort": 9000}]}],
    },
    {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]},
]

INVALID = [
    ({"podSelector": {"matchLabels": {"-bad": "x"}}}, "spec.podSelector.matchLabels[-bad]"),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        "spec.podSelector.matchExpressions[0].values",
    ),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
        "spec.podSelector.matchExpressions[0].values",
    ),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Ingress"]}, "spec.policyTypes[1]"),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]"),
    (
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
        "spec.ingress[0].from[0]",
    ),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "nonsense"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr"),
    (
        {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}]}]},
        "spec.egress[0].to[0].ipBlock.cidr",
    ),
    (
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
        "spec.ingress[0].from[0].ipBlock.except[0]",
    ),
    (
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]},
        "spec.ingress[0].from[0].ipBlock.except[0]",
    ),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "Bad_Name"}]}]}, "spec.ingress[0].ports[0].port"),
    (
        {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
        "spec.ingress[0].ports[0].endPort",
    ),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "spec.ingress[0].ports[0].endPort"),
]


@pytest.mark.parametrize("spec", VALID)
def test_valid_policies_pass(spec: dict[str, Any]) -> None:
    policy_validation.network_policy(policy(spec))


@pytest.mark.parametrize(("spec", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_policies_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        policy_validation.network_policy(policy(spec))
    assert caught.value.message.startswith(field + ":"), caught.value.message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"policyTypes": ["Sideways"]}, "spec.policyTypes[0]"),
        ({"ingress": [{"ports": [{"protocol": "SCTP"}]}]}, "spec.ingress[0].ports[0].protocol"),
        ({"ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}]}]},
         "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator"),
    ],
)  # fmt: skip
def test_manifest_shapes_the_server_never_sees_are_refused_by_pi(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        policy(spec)


def test_policy_types_default_as_in_kubernetes() -> None:
    ingress_only = policy({"podSelector": {}})
    policy_validation.apply_defaults(ingress_only)
    assert list(ingress_only.spec.policy_types) == [policy_pb2.POLICY_TYPE_INGRESS]
    both = policy({"podSelector": {}, "egress": [{}]})
    policy_validation.apply_defaults(both)
    assert list(both.spec.policy_types) == [policy_pb2.POLICY_TYPE_INGRESS, policy_pb2.POLICY_TYPE_EGRESS]


def test_a_manifest_survives_the_round_trip() -> None:
    text = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x, labels: {tier: data}}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: red}}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
    ports:
    - {protocol: TCP, port: 5432}
    - {protocol: UDP, port: serve, endPort: null}
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{protocol: TCP, port: 80, endPort: 443}]
"""
    docs = manifests.load_all(text.replace(", endPort: null", ""), "db.yml")
    obj = docs[0].obj
    assert isinstance(obj, policy_pb2.NetworkPolicy)
    policy_validation.network_policy(obj)
    rendered = manifests.render(obj)
    again = manifests.parse(rendered, "rendered")
    assert again.obj == obj, rendered
    assert rendered["spec"]["ingress"][0]["from"][1]["ipBlock"]["except"] == ["198.51.100.128/25"]
    assert rendered["spec"]["ingress"][0]["ports"][1] == {"protocol": "UDP", "port": "serve"}


@pytest.mark.parametrize(
    ("labels", "field"),
    [({"kubernetes.io/metadata.name": "other"}, "metadata.labels[kubernetes.io/metadata.name]"),
     ({"bad key!": "x"}, "metadata.labels[bad key!]")],
)  # fmt: skip
def test_namespace_labels_are_checked(labels: dict[str, str], field: str) -> None:
    ns = policy_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name="x", labels=labels))
    with pytest.raises(ApiError) as caught:
        policy_validation.namespace(ns)
    assert caught.value.message.startswith(field), caught.value.message
