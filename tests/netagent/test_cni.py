"""The pinet-cni plugin through its real protocol: environment and stdin in,
result or error JSON out."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.devstack.stack import cni_socket
from tests.helpers.cloud import Cloud
from tests.helpers.procs import ROOT

PLUGIN = os.path.join(ROOT, ".venv/bin/pinet-cni")


def cni(command: str, config: Any, **env: str) -> tuple[int, Any]:
    stdin = config if isinstance(config, str) else json.dumps(config)
    full_env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": os.path.dirname(PLUGIN), **env}
    out = subprocess.run([PLUGIN], input=stdin, capture_output=True, text=True, env=full_env, timeout=60, check=False)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else None


async def test_cni_add_check_del_and_errors(cloud: Cloud) -> None:
    t = await cloud.tenant("alpha")
    host = cloud.hosts.host(1)
    pod = objects_pb2.Pod()
    pod.metadata.name = "runtime-pod"
    pod.metadata.annotations["pinet.io/netns"] = "runtime"
    pod.spec.node_name = host
    pod.spec.containers.add(name="c", image="busybox")
    created = await t.call("CreatePod", network_pb2.CreatePodRequest(pod=pod))
    netns = f"{cloud.hosts.prefix}cni1"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    config = {"cniVersion": "1.0.0", "name": "pinet", "type": "pinet-cni", "socket": cni_socket(host),
              "tenant": "alpha"}  # fmt: skip
    env = {"CNI_CONTAINERID": "c0ffee", "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=runtime-pod"}  # fmt: skip
    try:
        code, out = cni("VERSION", "")
        assert code == 0 and "1.0.0" in out["supportedVersions"]

        code, out = cni("ADD", config, **env)
        assert code == 0, out
        assert out["cniVersion"] == "1.0.0"
        assert out["ips"][0]["address"] == f"{created.status.pod_ip}/16" and out["ips"][0]["gateway"] == "10.244.0.1"
        assert out["interfaces"][0]["name"] == "eth0" and out["interfaces"][0]["sandbox"] == f"/run/netns/{netns}"
        assert out["dns"]["nameservers"] == ["10.244.0.2"] and "ndots:5" in out["dns"]["options"]
        addr = cloud.hosts.exec(netns, "ip", "-o", "addr", "show", "eth0").stdout
        assert created.status.pod_ip in addr
        ready = await cloud.wait_ready(t, "runtime-pod")
        assert ready.status.netns == f"/run/netns/{netns}"
        code, again = cni("ADD", config, **env)
        assert code == 0 and again["ips"] == out["ips"], "ADD is idempotent"

        assert cni("CHECK", config, **env) == (0, None)
        # The agent repairs drift within its resync interval (2 s here), so
        # CHECK must be quicker than that to see the damage.
        for _ in range(5):
            cloud.hosts.exec(netns, "ip", "addr", "flush", "dev", "eth0")
            code, err = cni("CHECK", config, **env)
            if code == 1:
                break
        assert code == 1 and err["code"] == 100 and "lacks" in err["details"], err

        assert cni("DEL", config, **env) == (0, None)
        assert "eth0" not in cloud.hosts.exec(netns, "ip", "-o", "link").stdout, "DEL removed our interface"
        assert cni("DEL", config, **env) == (0, None), "DEL of something absent succeeds"
        # The runtime's namespace itself stays: it is not ours.
        assert netns in os.listdir("/run/netns")

        bad = [
            ("not json", "{nope", env, 6),
            ("old version", {**config, "cniVersion": "0.1.0"}, env, 1),
            ("no name", {k: v for k, v in config.items() if k != "name"}, env, 7),
            ("no container id", config, {k: v for k, v in env.items() if k != "CNI_CONTAINERID"}, 4),
            ("no pod name", config, {**env, "CNI_ARGS": "K8S_POD_NAMESPACE=default"}, 4),
            ("bad CNI_ARGS", config, {**env, "CNI_ARGS": "garbage"}, 4),
            ("unknown pod", config, {**env, "CNI_ARGS": "K8S_POD_NAME=nobody"}, 3),
            ("agent down", {**config, "socket": "/run/pinet/no-such-agent.sock"}, env, 11),
            ("a TCP agent address", {**config, "agent": "127.0.0.1:7711"}, env, 7),
        ]
        for what, cfg, e, expected in bad:
            code, err = cni("ADD", cfg, **e)
            assert code == 1 and err["code"] == expected, (what, err)
            assert err["cniVersion"] and err["msg"], what
        assert "eth0" not in cloud.hosts.exec(netns, "ip", "-o", "link").stdout, "failed ADDs left nothing"
        code, err = cni("FROB", config, **env)
        assert code == 1 and err["code"] == 4
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        await t.call("DeletePod", network_pb2.ObjectRef(name="runtime-pod"))
