"""Little TCP programs run inside namespaces to check real traffic."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.helpers.cloud import Cloud

# A one-connection-at-a-time TCP server that answers "<tag> <peer ip>".
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, (ip, _) = s.accept()
    c.sendall(f"{sys.argv[2]} {ip}\\n".encode()); c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode().strip())
except OSError as e:
    print("FAILED", e); sys.exit(1)
"""
# Sends a line every 50 ms on one connection for a while; fails on any error.
CHATTER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
end = time.time() + float(sys.argv[3]); n = 0
while time.time() < end:
    c.sendall(b"ping\\n"); assert c.recv(5) == b"ping\\n"; n += 1; time.sleep(0.05)
print("exchanged", n)
"""
ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4)
c, _ = s.accept()
while data := c.recv(100): c.sendall(data)
"""


def serve(netns: str, port: int, tag: str, script: str = SERVER) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", script, str(port), tag])
    time.sleep(0.3)
    return proc


def connect(cloud: Cloud, netns: str, ip: str, port: int, timeout: float = 2) -> str:
    out = cloud.hosts.exec(netns, sys.executable, "-c", CLIENT, ip, str(port), str(timeout))
    return str(out.stdout.strip())


# Opens count connections one after another and prints the first word of
# each reply (or FAILED): one process for many requests, which matters where
# starting Python is slow (the IPVS VM).
MANY = """
import socket, sys
for _ in range(int(sys.argv[3])):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
        print(c.recv(100).decode().split()[0]); c.close()
    except OSError:
        print("FAILED")
"""


def many(netns: str, ip: str, port: int, count: int, timeout: float = 2) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", MANY, ip, str(port), str(count), str(timeout)],
        capture_output=True, text=True, check=False, timeout=60 + count * timeout,
    )  # fmt: skip
    return out.stdout.split()


# Answers every UDP datagram with its tag.
UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    _, peer = s.recvfrom(100)
    s.sendto(sys.argv[2].encode(), peer)
"""
# From one source port, asks every 0.2 s for a while, printing who answered.
UDP_ASKER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
s.bind(("0.0.0.0", 40053))
end = time.time() + float(sys.argv[3])
while time.time() < end:
    s.sendto(b"?", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(100)[0].decode(), flush=True)
    except OSError:
        print("-", flush=True)
    time.sleep(0.2)
"""
