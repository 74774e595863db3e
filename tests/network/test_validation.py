"""Malformed manifests: each is rejected with a message naming the field and
leaves nothing behind."""

from __future__ import annotations

import grpc
import pytest

from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.cli import manifests
from pinet.etcd.client import Etcd
from pinet.etcd.keyspace import DEPLOYMENTS, ENDPOINTS, IPAM_ADDRESSES, NODE_PORTS, PODS, SERVICES
from tests.helpers.agent import FakeWiringAgents
from tests.helpers.manifest_cases import CASES, NEEDS_THE_TENANT
from tests.helpers.platform import Platform

# One case of each kind end to end, and those only the API can refuse (a
# KeyError here: a case was renamed); the rest of the table runs
# in-process in tests/unit/test_validation.py.
_BY_NAME = {c[0]: c for c in CASES}
END_TO_END = [_BY_NAME[name] for name in sorted({
    "pod name with capitals", "container without image", "node port outside the range",
    "deployment selector not matching", "unsupported kind", *NEEDS_THE_TENANT,
})]  # fmt: skip


@pytest.mark.parametrize(("what", "text", "field"), END_TO_END, ids=[c[0] for c in END_TO_END])
async def test_malformed_manifest_is_rejected_naming_the_field(
    platform: Platform, agents: FakeWiringAgents, etcd: Etcd, what: str, text: str, field: str
) -> None:
    t = await platform.tenant()
    await t.call("WhoAmI", network_pb2.WhoAmIRequest())
    prefixes = [k.scope_prefix(t.name) for k in (PODS, SERVICES, DEPLOYMENTS, ENDPOINTS)]
    prefixes += [
        IPAM_ADDRESSES.scope_prefix(f"{t.name}.default.pod"),
        IPAM_ADDRESSES.scope_prefix(f"{t.name}.default.svc"),
    ]
    before = [await etcd.count_prefix(p) for p in prefixes] + [await etcd.count_prefix(NODE_PORTS.prefix)]
    message = ""
    try:
        docs = manifests.load_all(text, "test.yml")
        obj = docs[0].obj
        request: object
        if isinstance(obj, objects_pb2.Pod):
            method, request = "CreatePod", network_pb2.CreatePodRequest(pod=obj)
        elif isinstance(obj, objects_pb2.Service):
            method, request = "CreateService", network_pb2.CreateServiceRequest(service=obj)
        else:
            assert isinstance(obj, objects_pb2.Deployment)
            method, request = "CreateDeployment", network_pb2.CreateDeploymentRequest(deployment=obj)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await t.call(method, request)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE), err.value.details()
        message = err.value.details() or ""
    except manifests.ManifestError as exc:
        message = str(exc)
    assert field in message, f"{what}: {message!r} does not name {field!r}"
    after = [await etcd.count_prefix(p) for p in prefixes] + [await etcd.count_prefix(NODE_PORTS.prefix)]
    assert after == before, f"{what}: something was left behind"
