"""`pinet web POD`: a web server for the walkthrough, run inside a pod's
network namespace (`pi exec POD -- pinet web POD`).

It serves a page naming the pod with Debian's nginx and the project's
configuration (examples/nginx.conf), or with Python's http.server where nginx
is missing. It detaches, so `pi exec` returns, and stops by itself when the
pod's namespace is deleted, so deleting the pod also stops its server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = Path("/run/pinet-web")
PAGE = """<!doctype html>
<html><head><title>{pod}</title></head>
<body><h1>Welcome to nginx on pinet</h1><p>Served by pod <b>{pod}</b>.</p></body></html>
"""


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def namespace_alive(inode: int) -> bool:
    """True while some named namespace (the pod's) is the one we run in."""
    try:
        return any(os.stat(f"/run/netns/{n}").st_ino == inode for n in os.listdir("/run/netns"))
    except FileNotFoundError:
        return False


def server_command(pod: str, port: int, base: Path) -> list[str]:
    www = base / "www"
    www.mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir(exist_ok=True)
    (www / "index.html").write_text(PAGE.format(pod=pod))
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    template = ROOT / "examples" / "nginx.conf"
    if nginx and template.exists():
        conf = base / "nginx.conf"
        conf.write_text(template.read_text().replace("@DIR@", str(base)).replace("@PORT@", str(port)))
        return [nginx, "-c", str(conf), "-p", str(base)]
    return [sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", str(www)]


def supervise(command: list[str], inode: int) -> None:
    """Runs command until the namespace goes (or the server exits)."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and namespace_alive(inode):
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pinet web", description=__doc__.split("\n\n")[0])
    parser.add_argument("pod", help="the pod's name, shown on the page")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--foreground", action="store_true", help="do not detach")
    args = parser.parse_args(argv)
    inode = netns_inode()
    if not namespace_alive(inode):
        print("pinet web: run it inside a pod: pi exec POD -- pinet web POD", file=sys.stderr)
        return 2
    base = STATE / f"{args.pod}-{inode}"
    command = server_command(args.pod, args.port, base)
    if not args.foreground and os.fork() > 0:
        print(f"serving {args.pod}'s page on port {args.port} with {Path(command[0]).name}")
        return 0
    if not args.foreground:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    try:
        supervise(command, inode)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0
