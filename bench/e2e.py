"""bench-e2e: network programming latency on the local stack.

For 200 services created one after another with `pi create -f`, and 200 more
through CreateService (their pod already running), the time from starting
`pi` (or the call) until, in a client pod on the other host, the name resolves
through the pod's own resolv.conf and its ClusterIP answers a TCP connection.
Target: p99 under 250 ms (Kubernetes' SLO for network programming is 30 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from pinet.devstack.etcd import free_port
from pinet.network.v1 import network_pb2, network_pb2_grpc, objects_pb2

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Reads "name ip" lines; for each, from the moment it reads it, polls until the name resolves to ip and
# ip:80 accepts a connection; prints the seconds that took.
PROBE = """
import socket, sys, time
for line in sys.stdin:
    name, ip = line.split()
    start = time.perf_counter()
    while True:
        try:
            if socket.gethostbyname(name) == ip:
                socket.create_connection((ip, 80), timeout=0.2).close()
                break
        except OSError:
            pass
        time.sleep(0.002)
    print(time.perf_counter() - start, flush=True)
"""
SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  clusterIP: {ip}
  selector:
    app: web
  ports:
    - port: 80
      targetPort: 80
"""
POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {labels}
spec:
  nodeName: {node}
  containers:
    - name: c
      image: busybox
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=200)
    args = parser.parse_args()
    results = {}
    for mode in ("TLS", "plaintext"):
        results[mode] = one_stack(args.services, insecure=mode == "plaintext")
    count = args.services
    print(f"{count} services created one after another, their pod already running; the time until, in a pod")
    print("on the other host, the name resolves through its resolv.conf and the ClusterIP answers")
    print("(the stack as it runs, TLS and mTLS everywhere with etcd's RBAC, beside `pinet stack --insecure`):")
    for label, index in (("from starting `pi create -f`", 0), ("from calling CreateService", 1)):
        tls, plain = results["TLS"][index], results["plaintext"][index]
        print(f"  {label}:")
        for mode, values in (("TLS", tls), ("plaintext", plain)):
            print(f"    {mode:9}  p50 {pct(values, 0.5):4.0f} ms, p99 {pct(values, 0.99):4.0f} ms, "
                  f"max {max(values) * 1000:.0f} ms")  # fmt: skip
        print(
            f"    TLS/plaintext: p50 {pct(tls, 0.5) / pct(plain, 0.5):.2f}, p99 {pct(tls, 0.99) / pct(plain, 0.99):.2f}"
        )
    print("  (a `pi` process takes ~150-400 ms to start)")
    print("  target: p99 under 250 ms from CreateService (Kubernetes' network programming SLO: 30 s);")
    print("  TLS costs at most 15%")


def one_stack(count: int, insecure: bool) -> tuple[list[float], list[float]]:
    lab = f"b{os.getpid() % 1000:03d}{int(insecure)}"
    with tempfile.TemporaryDirectory(prefix="pinet-bench-e2e-") as tmp:
        state = Path(tmp)
        offset = 12_000 + (os.getpid() % 50) * 100  # ports of its own, below the ephemeral range
        stack = subprocess.Popen(
            [str(BIN / "pinet"), "stack", "--state-dir", str(state), "--etcd-port", str(free_port()),
             "--port-offset", str(offset), "--lab", lab, *(["--insecure"] if insecure else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            return run(stack, state, lab, offset, count, insecure)
        finally:
            stack.send_signal(2)
            stack.communicate(timeout=60)


def run(
    stack: subprocess.Popen[str], state: Path, lab: str, offset: int, count: int, insecure: bool
) -> tuple[list[float], list[float]]:
    assert stack.stdout is not None
    for line in stack.stdout:
        if "Press Ctrl-C" in line:
            break
    else:
        raise SystemExit("the stack did not start")
    env = {**os.environ, "PINET_API": f"127.0.0.1:{7700 + offset}", "PINET_TOKEN_FILE": str(state / "token")}
    env["PINET_CA"] = str(state / "pki" / "ca.crt")
    plain = ["--insecure"] if insecure else []

    def pi(*argv: str) -> str:
        return subprocess.run([str(BIN / "pi"), *plain, *argv], capture_output=True, text=True, env=env,
                              check=True, cwd=state).stdout  # fmt: skip

    (state / "web.yml").write_text(POD.format(name="web", labels="{app: web}", node=f"pinet-{lab}-h1"))
    (state / "client.yml").write_text(POD.format(name="client", labels="{role: client}", node=f"pinet-{lab}-h2"))
    pi("create", "-f", "web.yml")
    pi("create", "-f", "client.yml")
    deadline = time.monotonic() + 60
    while pi("get", "pods").count("Running") < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the pods did not start")
        time.sleep(0.2)
    pi("exec", "web", "--", str(BIN / "pinet"), "web", "web")
    probe = subprocess.Popen(
        [str(BIN / "pi"), *plain, "exec", "client", "--", sys.executable, "-c", PROBE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert probe.stdin is not None and probe.stdout is not None
    channel = (
        grpc.insecure_channel(env["PINET_API"])
        if insecure
        else grpc.secure_channel(env["PINET_API"], grpc.ssl_channel_credentials((state / "pki/ca.crt").read_bytes()))
    )
    stub = network_pb2_grpc.NetworkServiceStub(channel)
    token = (state / "token").read_text().strip()
    via_pi: list[float] = []
    via_api: list[float] = []
    try:
        for i in range(2 * count):
            name, ip = f"svc-{i}", f"10.244.{250 + i // 250}.{i % 250 + 1}"
            probe.stdin.write(f"{name} {ip}\n")
            probe.stdin.flush()
            if i < count:
                (state / f"{name}.yml").write_text(SERVICE.format(name=name, ip=ip))
                pi("create", "-f", f"{name}.yml")
            else:
                # The same through the API, without the CLI's own start-up.
                svc = objects_pb2.Service()
                svc.metadata.name = name
                svc.spec.cluster_ip = ip
                svc.spec.selector["app"] = "web"
                svc.spec.ports.add(port=80, target_port=80)
                stub.CreateService(network_pb2.CreateServiceRequest(service=svc),
                                   metadata=(("authorization", f"Bearer {token}"),))  # fmt: skip
            (via_pi if i < count else via_api).append(float(probe.stdout.readline()))
    finally:
        probe.kill()
        channel.close()
    return via_pi, via_api


if __name__ == "__main__":
    main()
