"""The control plane lets no one in: every service of a running cloud
refused without a certificate of the cluster CA, with another CA's, with
an expired one and over plaintext; identities the policy does not allow
refused with PERMISSION_DENIED naming them; etcd refusing clients without
certificates and writes outside each identity's role; certificates
rotated under load without a failed call."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pinet.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc
from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.devstack.etcd import EtcdServer
from pinet.etcd.client import Etcd
from pinet.etcd.errors import EtcdError, EtcdUnavailable
from pinet.etcd.keyspace import NODES, POD_NETWORK, PODS, TOKENS
from pinet.pki import authority
from pinet.pki.identity import Identity
from pinet.runtime.tls import Tls, TlsFiles, aio_channel
from tests.helpers import tls
from tests.helpers.cloud import Cloud, running_cloud
from tests.helpers.procs import ROOT, ServiceProcess

pytestmark = pytest.mark.netns


@dataclass
class Rogue:
    """Credentials an attacker might hold."""

    directory: Path

    def tls(self, identity: Identity) -> Tls:
        return Tls(TlsFiles.in_directory(self.directory, identity), identity)


@pytest.fixture(scope="module")
async def cloud(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    async with running_cloud(
        etcd_server.endpoint, tmp_path_factory.mktemp("control"), hosts_count=2, lb_args=["--backend", "nftables"],
        dns=True, floating="198.51.100.0/28",
    ) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Rogue:
    """A CA of the attacker's own, issuing certificates with our names."""
    directory = tmp_path_factory.mktemp("other-ca")
    authority.ensure(directory, [Identity("admin"), Identity("network")])
    return Rogue(directory)


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory) -> Rogue:
    """An admin certificate of the cluster CA that expired yesterday."""
    directory = tmp_path_factory.mktemp("expired")
    ca = authority.Authority.load(tls.pki())
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    ca.issue_into(directory, Identity("admin"), days=1, not_before=past)
    return Rogue(directory)


def services(cloud: Cloud) -> list[ServiceProcess]:
    assert cloud.dns is not None
    return [cloud.ipam, cloud.network, cloud.dns, *cloud.agents.values(), *cloud.lbs.values()]


async def health(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close(None)


async def test_every_service_refuses_callers_without_a_valid_certificate(
    cloud: Cloud, other_ca: Rogue, expired: Rogue
) -> None:
    for proc in services(cloud):
        who = f"{proc.service} ({proc.identity})"
        # The right credentials work: the check is on the credentials, not the port.
        assert await health(proc.channel()) == grpc.StatusCode.OK, who
        assert await health(grpc.aio.insecure_channel(proc.address)) == grpc.StatusCode.UNAVAILABLE, f"{who}: plaintext"
        forged = aio_channel(other_ca.tls(Identity("admin")), proc.address, proc.identity)
        assert await health(forged) == grpc.StatusCode.UNAVAILABLE, f"{who}: a certificate of another CA"
        if proc.service == "network":
            continue  # users reach the API with tokens; its own refusals are below
        stale = aio_channel(expired.tls(Identity("admin")), proc.address, proc.identity)
        assert await health(stale) == grpc.StatusCode.UNAVAILABLE, f"{who}: an expired certificate"
        cluster_ca = (tls.pki() / "ca.crt").read_bytes()
        anonymous = grpc.aio.secure_channel(
            proc.address, grpc.ssl_channel_credentials(cluster_ca),
            options=[("grpc.ssl_target_name_override", proc.identity.dns_name)],
        )  # fmt: skip
        assert await health(anonymous) == grpc.StatusCode.UNAVAILABLE, f"{who}: no client certificate"


async def test_the_api_takes_tokens_over_tls_only(cloud: Cloud, other_ca: Rogue) -> None:
    cluster_ca = (tls.pki() / "ca.crt").read_bytes()
    async with grpc.aio.secure_channel(cloud.network.address, grpc.ssl_channel_credentials(cluster_ca)) as channel:
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as no_token:
            await stub.WhoAmI(network_pb2.WhoAmIRequest(), timeout=5)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        tenant = await cloud.tenant("plain-tenant")
        metadata = (("authorization", f"Bearer {tenant.token}"),)
        me = await stub.WhoAmI(network_pb2.WhoAmIRequest(), metadata=metadata, timeout=5)
        assert me.tenant == "plain-tenant" and not me.admin
        admin = network_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as not_admin:
            await admin.IssueToken(network_pb2.IssueTokenRequest(tenant="x", admin=True), metadata=metadata, timeout=5)
        assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as act_as:
            await stub.WhoAmI(network_pb2.WhoAmIRequest(), metadata=(*metadata, ("x-pinet-tenant", "admin")), timeout=5)
        assert act_as.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A client that does not know the cluster CA refuses the server.
    rogue_roots = (other_ca.directory / "ca.crt").read_bytes()
    async with grpc.aio.secure_channel(cloud.network.address, grpc.ssl_channel_credentials(rogue_roots)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unverified:
            await network_pb2_grpc.NetworkServiceStub(channel).WhoAmI(network_pb2.WhoAmIRequest(), timeout=5)
        assert unverified.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_identities_the_policy_does_not_allow_are_refused(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts.host(1), cloud.hosts.host(2)
    lb1 = Identity("lb", h1)
    async with cloud.ipam.channel(lb1) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await ipam_pb2_grpc.IpamServiceStub(channel).Allocate(
                ipam_pb2.AllocateRequest(pool="default", owner=ipam_pb2.Owner(handle="h", tenant="default")), timeout=5
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"lb/{h1}" in (denied.value.details() or "") and "Allocate" in (denied.value.details() or "")
    request = netagent_pb2.AttachRequest(pod=netagent_pb2.PodRef(tenant="default", name="x"))
    async with cloud.agents[h2].channel(Identity("netagent", h1)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as other_node:
            await netagent_pb2_grpc.AgentServiceStub(channel).Attach(request, timeout=5)
        assert other_node.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"netagent/{h1}" in (other_node.value.details() or "")
    # The network service's own identity may allocate: the refusal is the policy's.
    async with cloud.ipam.channel(Identity("network")) as channel:
        pools = await ipam_pb2_grpc.IpamServiceStub(channel).ListPools(ipam_pb2.ListPoolsRequest(), timeout=5)
        assert pools is not None


async def test_etcd_refuses_strangers_and_writes_outside_a_role(cloud: Cloud, etcd_server: EtcdServer) -> None:
    h1, h2 = cloud.hosts.host(1), cloud.hosts.host(2)
    plain = await Etcd(etcd_server.endpoint.replace("https://", "http://"), timeout=2).connect()
    try:
        with pytest.raises(EtcdUnavailable):
            await plain.get(b"/pinet/v1/tokens/")
    finally:
        await plain.close()
    ca = (tls.pki() / "ca.crt").read_bytes()
    anonymous = grpc.aio.secure_channel(
        f"127.0.0.1:{etcd_server.client_port}", grpc.ssl_channel_credentials(ca),
        options=[("grpc.ssl_target_name_override", "etcd.pinet")],
    )  # fmt: skip
    assert await health(anonymous) == grpc.StatusCode.UNAVAILABLE, "etcd without a client certificate"
    async with etcd_server.client(Identity("lb", h1)) as lb:
        assert isinstance(await lb.list_prefix(PODS.prefix), tuple), "the lb reads what it serves from"
        with pytest.raises(EtcdError, match="permission denied"):
            await lb.put(TOKENS.key("0" * 64), b"forged")
        with pytest.raises(EtcdError, match="permission denied"):
            await lb.get(TOKENS.key("0" * 64))
    async with etcd_server.client(Identity("netagent", h1)) as agent:
        assert await agent.get(NODES.key(h1)) is not None
        with pytest.raises(EtcdError, match="permission denied"):
            await agent.put(NODES.key(h2), b"forged")
        with pytest.raises(EtcdError, match="permission denied"):
            await agent.put(PODS.key("default", "default", "x"), b"forged")
    async with etcd_server.client(Identity("dns")) as dns:
        with pytest.raises(EtcdError, match="permission denied"):
            await dns.put(PODS.key("default", "default", "x"), b"forged")


async def test_rotating_certificates_under_load_breaks_no_call(cloud: Cloud, etcd_server: EtcdServer) -> None:
    tenant = await cloud.tenant("rotation")
    before = await asyncio.to_thread(tls.serial_served, cloud.ipam.address)
    failures: list[BaseException] = []
    calls = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                # Through network to ipam (a long-lived mTLS channel) and etcd.
                fip = await tenant.call("AllocateFloatingIP", network_pb2.AllocateFloatingIPRequest())
                await tenant.call("ReleaseFloatingIP", network_pb2.ReleaseFloatingIPRequest(address=fip.address))
            except Exception as exc:
                failures.append(exc)
            calls += 1

    workers = [asyncio.create_task(load()) for _ in range(4)]
    try:
        await asyncio.sleep(1)
        identities = [proc.identity for proc in services(cloud)] + [tls.ADMIN, tls.MONITOR, Identity("etcd")]
        await asyncio.to_thread(authority.ensure, tls.pki(), identities, (), (), True)
        await asyncio.sleep(1)
        # New connections, with the new certificates on both sides.
        for proc in services(cloud):
            assert await health(proc.channel()) == grpc.StatusCode.OK, proc.service
        async with etcd_server.client(Identity("network")) as fresh:
            assert await fresh.current_revision() > 0, "etcd takes its new certificate too"
        await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    after = await asyncio.to_thread(tls.serial_served, cloud.ipam.address)
    assert after != before, "the ipam serves its new certificate without a restart"
    assert calls > 20 and not failures, f"{len(failures)} of {calls} calls failed: {failures[:3]}"
    for proc in services(cloud):
        assert proc.proc is not None and proc.proc.returncode is None, f"{proc.service} kept running"


def pi(cloud: Cloud, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.path.join(ROOT, ".venv/bin/pi"), *argv], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PINET_API": cloud.network.address, "PINET_CA": str(tls.pki() / "ca.crt"), **env},
    )  # fmt: skip


async def test_pi_speaks_tls_only_and_every_mutating_call_is_audited(cloud: Cloud, other_ca: Rogue) -> None:
    tenant = await cloud.tenant("audited")
    me = await asyncio.to_thread(pi, cloud, "whoami", PINET_TOKEN=tenant.token)
    assert me.returncode == 0, me.stderr
    assert "tenant audited:" in me.stdout and "over TLS, server verified" in me.stdout
    fip = await asyncio.to_thread(pi, cloud, "create", "fip", PINET_TOKEN=tenant.token)
    assert fip.returncode == 0, fip.stderr
    address = fip.stdout.split("/")[-1].strip()
    wrong_ca = await asyncio.to_thread(
        pi, cloud, "whoami", PINET_TOKEN=tenant.token, PINET_CA=str(other_ca.directory / "ca.crt")
    )
    assert wrong_ca.returncode == 1 and len(wrong_ca.stderr.strip().splitlines()) == 1
    assert "TLS handshake" in wrong_ca.stderr, wrong_ca.stderr
    plaintext = await asyncio.to_thread(pi, cloud, "--insecure", "--server", "192.0.2.1:7700", "whoami",
                                        PINET_TOKEN=tenant.token)  # fmt: skip
    assert plaintext.returncode == 1 and "in clear" in plaintext.stderr
    forbidden = await asyncio.to_thread(pi, cloud, "admin", "token", "someone", PINET_TOKEN=tenant.token)
    assert forbidden.returncode == 1 and "Forbidden" in forbidden.stderr
    released = await asyncio.to_thread(pi, cloud, "delete", "fip", address, PINET_TOKEN=tenant.token)
    assert released.returncode == 0, released.stderr

    log = cloud.network.log_path.read_text(errors="replace")
    assert "audit tenant=audited admin=false call=AllocateFloatingIP" in log and "result=OK" in log
    assert f"call=ReleaseFloatingIP object={address} result=OK" in log
    assert "audit tenant=audited admin=false call=IssueToken object=someone result=PERMISSION_DENIED" in log
    assert "call=WhoAmI" not in log, "reads are not audited"


async def test_a_client_reconnects_with_its_rotated_certificate_after_the_old_one_expired(
    cloud: Cloud, etcd_server: EtcdServer, tmp_path: Path
) -> None:
    """A network replica starts with a certificate that expires in 25 s and
    is rotated at once. After the old one expired the ipam restarts, so the
    replica must reconnect to ipam (and etcd) with the rotated files."""
    ca = authority.Authority.load(tls.pki())
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    lifetime = 25
    started = datetime.datetime.now(datetime.UTC)
    start = started - datetime.timedelta(days=1) + datetime.timedelta(seconds=lifetime)
    ca.issue_into(tmp_path, Identity("network"), days=1, not_before=start)
    files = ["--tls-ca", str(tmp_path / "ca.crt"), "--tls-cert", str(tmp_path / "network.crt"),
             "--tls-key", str(tmp_path / "network.key"), "--tls-poll", "1"]  # fmt: skip
    state = tmp_path / "state"
    replica = await ServiceProcess(
        "network", etcd_server.endpoint, ["--ipam", cloud.ipam.address, "--bootstrap-dir", str(state), *files]
    ).start()
    try:
        async with replica.channel() as channel:
            stub = network_pb2_grpc.NetworkServiceStub(channel)
            token = (state / "token").read_text().strip()
            metadata = (("authorization", f"Bearer {token}"),)

            async def round_trip() -> None:
                fip = await stub.AllocateFloatingIP(
                    network_pb2.AllocateFloatingIPRequest(), metadata=metadata, timeout=5
                )
                await stub.ReleaseFloatingIP(
                    network_pb2.ReleaseFloatingIPRequest(address=fip.address), metadata=metadata, timeout=5
                )

            await round_trip()
            ca.issue_into(tmp_path, Identity("network"))  # rotated: a year from now
            rotated = asyncio.get_running_loop().time()
            expired_at = started + datetime.timedelta(seconds=lifetime + 1)
            await asyncio.sleep(max(0.0, (expired_at - datetime.datetime.now(datetime.UTC)).total_seconds()))
            await cloud.ipam.terminate()
            await cloud.ipam.start()
            failures = []
            for _ in range(40):
                try:
                    await round_trip()
                    break
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc.details())
                    await asyncio.sleep(0.25)
            else:
                raise AssertionError(f"the replica never reached the restarted ipam: {failures[-3:]}")
            # The replaced channels close 30 s after the reopen; the watches
            # that ran on them resume on the new ones (a token issued waits
            # for the replica's token informer to see it).
            await asyncio.sleep(max(0.0, rotated + 33 - asyncio.get_running_loop().time()))
            admin = network_pb2_grpc.AdminServiceStub(channel)
            admin_md = (("authorization", f"Bearer {(state / 'admin-token').read_text().strip()}"),)
            await admin.IssueToken(network_pb2.IssueTokenRequest(tenant="after-grace"), metadata=admin_md, timeout=15)
            await round_trip()
        assert "reopening" in replica.log_path.read_text(errors="replace")
    finally:
        await replica.terminate()


async def test_an_agent_speaks_only_for_its_own_nodes_pods(cloud: Cloud, etcd_server: EtcdServer) -> None:
    """netagent/host-1 may write reports under its own node only, and a
    report it writes there about host-2's pod is not taken."""
    h1, h2 = cloud.hosts.host(1), cloud.hosts.host(2)
    t = await cloud.tenant("reports")
    victim = await cloud.run_pod(t, "victim", h2)
    forged = objects_pb2.Pod()
    forged.metadata.tenant, forged.metadata.namespace, forged.metadata.name = "reports", "default", "victim"
    forged.metadata.uid = victim.metadata.uid
    forged.spec.node_name = h1
    forged.status.network_ready, forged.status.message = False, "forged by host-1"
    async with etcd_server.client(Identity("netagent", h1)) as agent:
        with pytest.raises(EtcdError, match="permission denied"):
            await agent.put(POD_NETWORK.key(h2, victim.metadata.uid), POD_NETWORK.encode(forged))
        await agent.put(POD_NETWORK.key(h1, victim.metadata.uid), POD_NETWORK.encode(forged))
        try:
            await asyncio.sleep(2)
            pod = await t.call("GetPod", network_pb2.ObjectRef(name="victim"))
            assert pod.status.network_ready and pod.status.message != "forged by host-1", pod.status
        finally:
            await agent.delete(POD_NETWORK.key(h1, victim.metadata.uid))
    await t.call("DeletePod", network_pb2.ObjectRef(name="victim"))
