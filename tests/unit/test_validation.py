"""Every malformed manifest of the shared table, rejected in-process by the
manifest parser or the API's validation with a message naming the field."""

from __future__ import annotations

import pytest

from pinet.api.network.v1 import objects_pb2
from pinet.cli import manifests
from pinet.runtime.errors import ApiError
from services.network import validation
from tests.helpers.manifest_cases import CASES, NEEDS_THE_TENANT

IN_PROCESS = [c for c in CASES if c[0] not in NEEDS_THE_TENANT]


def rejection(text: str) -> str:
    """The message the first stage that refuses text gives ("" : accepted)."""
    try:
        obj = manifests.load_all(text, "test.yml")[0].obj
    except manifests.ManifestError as exc:
        return str(exc)
    try:
        if isinstance(obj, objects_pb2.Pod):
            validation.pod(obj)
        elif isinstance(obj, objects_pb2.Service):
            validation.service(obj)
        else:
            assert isinstance(obj, objects_pb2.Deployment)
            validation.deployment(obj)
    except ApiError as exc:
        return exc.message
    return ""


@pytest.mark.parametrize(("what", "text", "field"), IN_PROCESS, ids=[c[0] for c in IN_PROCESS])
def test_malformed_manifest_is_refused_naming_the_field(what: str, text: str, field: str) -> None:
    message = rejection(text)
    assert message, f"{what}: accepted"
    assert field in message, f"{what}: {message!r} does not name {field!r}"


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, labels: {app: web}}\n"
        "spec: {containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 80}]}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
        "spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: None, ports: [{port: 5432}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: example.org}\n",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 2, selector: "
        "{matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: "
        "{containers: [{name: c, image: nginx}]}}}\n",
    ],
    ids=["pod", "service", "headless", "external-name", "deployment"],
)
def test_well_formed_manifests_pass(text: str) -> None:
    """The control: the checks above do not refuse everything."""
    assert rejection(text) == ""
