#!/usr/bin/env python3
"""Added latency of the egress gateway: one API call through the gateway against a direct call to
the same stand-in Messages API (tests/standin/anthropic.py), side by side, interleaved.

Three paths to the one stand-in (each its own process, all on loopback):
  direct   client -> stand-in
  gateway  client -> gateway (TCP listener) -> stand-in           the gateway alone
  door     client -> L2 forwarder (guest/forward.py) -> gateway's unix socket -> stand-in
           the whole L2 path minus the sandbox's loopback
Per path: the median (and p90) time of a non-streamed call, and the time to the first byte of a
streamed answer (its message_start event). Requests carry a Claude-Code-sized body (~76 KB) on a
kept-alive connection, as the CLI's do.

    bench/gateway_latency.py [--runs 300] [--body 76000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from posture.gateway import launch  # noqa: E402
from posture.gateway.broker import Brokered, Swap  # noqa: E402

SENTINEL = "sk-ant-api03-" + "s" * 92
REAL = "sk-ant-api03-" + "r" * 92

FORWARDER = r"""
import selectors, sys
sys.path.insert(0, sys.argv[1])
import forward
sel = selectors.DefaultSelector()
forward.Forward(sel, f"127.0.0.1:{sys.argv[2]}={sys.argv[3]}")
print("ready", flush=True)
while True:
    for key, mask in sel.select():
        key.data[1](key.fileobj, mask)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def call(self, body: bytes, stream: bool) -> tuple[float, float]:
        """(seconds to the first body byte, seconds to the whole answer)."""
        head = (f"POST /v1/messages?beta=true HTTP/1.1\r\nHost: bench\r\nx-api-key: {SENTINEL}\r\n"
                f"content-type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        start = time.perf_counter()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head_raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head_raw.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {head_raw[:200]!r}")
        if stream:
            while b"message_start" not in self.buf:
                self._fill()
            first = time.perf_counter() - start
            while b"\r\n0\r\n\r\n" not in self.buf:
                self._fill()
            self.buf = self.buf.split(b"\r\n0\r\n\r\n", 1)[1]
            return first, time.perf_counter() - start
        length = int(next(line.split(b":", 1)[1] for line in head_raw.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(self.buf) < length:
            self._fill()
        first = time.perf_counter() - start
        self.buf = self.buf[length:]
        return first, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--body", type=int, default=76000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="posture-gwbench-"))
    os.environ.setdefault("XDG_STATE_HOME", str(tmp / "state"))  # the gateway's audit record goes here, not into the user's log
    procs: list[subprocess.Popen] = []
    try:
        api = subprocess.Popen([sys.executable, str(ROOT / "tests/standin/anthropic.py"), "--port", "0"], stdout=subprocess.PIPE, text=True)
        procs.append(api)
        assert api.stdout is not None
        url = api.stdout.readline().split()[1]
        direct_port = int(url.rsplit(":", 1)[1])
        brokered = Brokered(swaps=[Swap("$ANTHROPIC_API_KEY", SENTINEL, REAL, ["127.0.0.1"])], upstream=url)
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(64)
        gw_port = tcp.getsockname()[1]
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        gw_tcp = launch.start(brokered, tmp / "a", "bench", listener=tcp)
        gw_unix = launch.start(brokered, tmp / "b", "bench")
        procs += [gw_tcp.proc, gw_unix.proc]
        door_port = _free_port()
        fwd = subprocess.Popen([sys.executable, "-c", FORWARDER, str(ROOT / "src/posture/guest"), str(door_port), gw_unix.socket],
                               stdout=subprocess.PIPE, text=True)
        procs.append(fwd)
        assert fwd.stdout is not None and fwd.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # the gateways finish importing
        body = json.dumps({"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x" * args.body}]}).encode()
        plain = body.replace(b'"stream": true', b'"stream": false')
        paths = {"direct": direct_port, "gateway": gw_port, "door": door_port}
        clients = {name: Client(port) for name, port in paths.items()}
        for c in clients.values():  # warm up every connection (and the gateways' upstream pools)
            for _ in range(10):
                c.call(plain, False)
                c.call(body, True)
        calls: dict[str, list[float]] = {n: [] for n in paths}
        firsts: dict[str, list[float]] = {n: [] for n in paths}
        for _ in range(args.runs):
            for name, c in clients.items():
                calls[name].append(c.call(plain, False)[1])
                firsts[name].append(c.call(body, True)[0])
        def ms(values: list[float], q: float = 0.5) -> float:
            return statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000 if q != 0.5 else statistics.median(values) * 1000

        print(f"{args.runs} runs per path, request body {len(plain)} bytes, kept-alive connections, loopback")
        print(f"{'path':8} {'call median':>12} {'call p90':>9} {'+median':>8} {'first byte median':>18} {'p90':>7} {'+median':>8}")
        for name in paths:
            print(f"{name:8} {ms(calls[name]):10.2f}ms {ms(calls[name], 0.9):7.2f}ms {ms(calls[name]) - ms(calls['direct']):+7.2f}ms"
                  f" {ms(firsts[name]):16.2f}ms {ms(firsts[name], 0.9):5.2f}ms {ms(firsts[name]) - ms(firsts['direct']):+7.2f}ms")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
