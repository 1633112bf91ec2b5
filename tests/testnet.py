"""The test network: network namespaces this test run creates, and nothing in the root namespace.

Layout (all created here, all torn down at the end):

    [ns GW]  posture's network side runs here (netd + slirp4netns, libvirtd, ssh clients)
      veth gw0 (198.51.100.1/24 side) <-> veth hs0 in [ns HOSTS]
      default routes point into HOSTS, so nothing can leave the machine from GW.
    [ns HOSTS] the test hosts, each a TCP listener that answers "hello from <addr>":
      PUBLIC   198.51.100.10   and 2001:db8:51::10  (the "public internet")
      TAILNET  100.64.0.10     and fd7a:115c:a1e0::10
      LAN      192.168.77.10, 10.77.0.10, 172.16.77.10, fd00:77::10
      METADATA 169.254.169.254

The machine's root network namespace gets no address and no route.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PORT = 8080
PUBLIC = "198.51.100.10"
PUBLIC6 = "2001:db8:51::10"
TAILNET = "100.64.0.10"
TAILNET6 = "fd7a:115c:a1e0::10"
LAN_HOSTS = ("192.168.77.10", "10.77.0.10", "172.16.77.10")
LAN6 = "fd00:77::10"
METADATA = "169.254.169.254"
INTERNAL = (TAILNET, *LAN_HOSTS, METADATA)
INTERNAL6 = (TAILNET6, LAN6)

_SERVER = r"""
import socket, sys, threading
def serve(addr, family):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, %(port)d)); s.listen(64)
    while True:
        c, peer = s.accept()
        try:
            c.sendall(("hello from %%s\n" %% addr).encode())
        finally:
            c.close()
addrs = sys.argv[1:]
for a in addrs:
    threading.Thread(target=serve, args=(a, socket.AF_INET6 if ":" in a else socket.AF_INET), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
""" % {"port": PORT}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise with its stderr on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside network namespace `ns`."""
    return sh("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class TestNet:
    """Names of the namespaces and the processes serving in them."""

    gw: str
    hosts: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def gw_path(self) -> str:
        """Path of the GW namespace, for nsenter --net=."""
        return f"/run/netns/{self.gw}"

    def run_in_gw(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a long-running process in the GW namespace (stopped at teardown)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.gw, *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def listen_on_gw_loopback(self, port: int) -> subprocess.Popen:
        """A listener on 127.0.0.1:`port` in GW: the "host loopback" a sandbox must not reach."""
        code = _SERVER.replace(str(PORT), str(port))
        proc = self.run_in_gw([sys.executable, "-c", code, "127.0.0.1", "::1"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc


def _wait_listening(ns: str, addr: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = f"import socket;socket.create_connection(({addr!r},{PORT}),timeout=1).recv(64)"
        if in_ns(ns, sys.executable, "-c", probe, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"test host {addr} did not come up in {ns}")


@contextlib.contextmanager
def testnet(prefix: str = "pt") -> Iterator[TestNet]:
    """Create the test network, yield it, tear it all down."""
    if os.geteuid() != 0:
        raise RuntimeError("the test network needs root (ip netns add)")
    tag = uuid.uuid4().hex[:6]
    net = TestNet(gw=f"{prefix}gw{tag}", hosts=f"{prefix}hs{tag}")
    veth_gw, veth_hs = f"g{tag}", f"h{tag}"
    try:
        sh("ip", "netns", "add", net.gw)
        sh("ip", "netns", "add", net.hosts)
        # Create the pair inside GW directly, so no interface ever appears in the root namespace.
        in_ns(net.gw, "ip", "link", "add", veth_gw, "type", "veth", "peer", "name", veth_hs)
        in_ns(net.gw, "ip", "link", "set", veth_hs, "netns", net.hosts)
        for ns in (net.gw, net.hosts):
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
        in_ns(net.gw, "ip", "addr", "add", "198.51.100.1/24", "dev", veth_gw)
        in_ns(net.gw, "ip", "-6", "addr", "add", "2001:db8:51::1/64", "dev", veth_gw, "nodad")
        in_ns(net.gw, "ip", "link", "set", veth_gw, "up")
        in_ns(net.gw, "ip", "route", "add", "default", "via", PUBLIC)
        in_ns(net.gw, "ip", "-6", "route", "add", "default", "via", PUBLIC6)
        in_ns(net.hosts, "ip", "addr", "add", f"{PUBLIC}/24", "dev", veth_hs)
        in_ns(net.hosts, "ip", "-6", "addr", "add", f"{PUBLIC6}/64", "dev", veth_hs, "nodad")
        in_ns(net.hosts, "ip", "link", "set", veth_hs, "up")
        for addr in (*INTERNAL, *INTERNAL6):
            plen = "128" if ":" in addr else "32"
            in_ns(net.hosts, "ip", "addr", "add", f"{addr}/{plen}", "dev", "lo")
        in_ns(net.hosts, "ip", "route", "add", "default", "via", "198.51.100.1")
        in_ns(net.hosts, "ip", "-6", "route", "add", "default", "via", "2001:db8:51::1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", net.hosts, sys.executable, "-c", _SERVER, PUBLIC, PUBLIC6, *INTERNAL, *INTERNAL6],
            stdout=subprocess.PIPE,
            text=True,
        )
        net.procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        _wait_listening(net.gw, PUBLIC)
        _wait_listening(net.gw, TAILNET)
        yield net
    finally:
        for proc in reversed(net.procs):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in (net.gw, net.hosts):
            if Path(f"/run/netns/{ns}").exists():
                # kill anything still living in the namespace, then delete it
                pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
                sh("ip", "netns", "del", ns, check=False)


def probe_connect(addr: str, port: int = PORT, timeout: float = 3.0) -> str:
    """Connect and read the greeting (used inside sandboxes via `python3 -c`)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((addr, port))
        return s.recv(64).decode()
