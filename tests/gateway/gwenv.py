"""Helpers for the gateway tests: a real gateway process in front of the stand-in API."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from posture.gateway import launch  # noqa: E402
from posture.gateway.broker import Brokered, Swap  # noqa: E402
from standin.anthropic import StandIn  # noqa: E402,F401

REAL_KEY = "sk-ant-api03-" + "R" * 86 + "-realAA"
REAL_OAUTH = "sk-ant-oat01-" + "O" * 86 + "-realAA"


def brokered(upstream: str, swaps: list[Swap]) -> Brokered:
    """A Brokered of the given swaps toward `upstream`."""
    return Brokered(swaps=swaps, upstream=upstream, base_url_env="ANTHROPIC_BASE_URL")


@dataclass
class Gw:
    """A started gateway listening on a TCP loopback port (tests) or its unix socket."""

    running: launch.Running
    port: int

    def conn(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def stop(self) -> None:
        launch.stop(self.running, self.running.facts())


def start(b: Brokered, runtime: Path, tcp: bool = True) -> Gw:
    """Start the real gateway process for `b` (TCP loopback listener, or its own unix socket)."""
    runtime.mkdir(parents=True, exist_ok=True)
    if tcp:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        return Gw(launch.start(b, runtime, "test", listener=sock), port)
    return Gw(launch.start(b, runtime, "test"), 0)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def message_request(stream: bool = True) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 10, "stream": stream, "tools": [{"name": "Bash"}],
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def sse_events(data: bytes) -> Iterator[dict[str, Any]]:
    for block in data.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                yield json.loads(line[6:])
