"""The egress log: one JSON object per line for every decision about a session's way out.

It lives in the session's state dir on the host (`<state>/posture/sessions/<id>.egress.jsonl`),
outside every boundary, written with O_APPEND by the gateway (and by posture itself for kernel
drops at the session's end), mode 0600.

Stable keys (documented in the README; new keys may be added, these never change meaning):
  time      UTC, ISO 8601 with milliseconds ("2026-12-01T10:00:00.123Z")
  session   the session id
  level     l2 | l3 | l4
  dest      the host asked for (a name, or an address literal), or the blocked range (kernel)
  port      the port asked for (null when the kernel counts a range)
  address   the address dialled (null when nothing was dialled)
  decision  allowed | refused
  rule      what decided: an allowlist entry, "api:<host>", a blocked range, "mode <mode>", "sni"
  source    gateway | kernel | trigger
  reason    a short human sentence (may be empty)
  count     how many attempts the line stands for (kernel lines; 1 otherwise)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

KEYS = ("time", "session", "level", "dest", "port", "address", "decision", "rule", "source", "reason", "count")
SUFFIX = ".egress.jsonl"


def path_for(sessions_dir: Path, session: str) -> Path:
    """The egress log of `session`, next to its record."""
    return sessions_dir / f"{session}{SUFFIX}"


def now() -> str:
    """The log's time format."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class EgressLog:
    """Appends decisions of one session to its log (one write per line: lines never interleave)."""

    def __init__(self, path: str | Path, session: str, level: str) -> None:
        self.path, self.session, self.level = str(path), session, level
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, dest: str, port: int | None, address: str | None, decision: str, rule: str, source: str = "gateway",
              reason: str = "", count: int = 1) -> dict[str, Any]:
        """Append one decision and return it."""
        line = {"time": now(), "session": self.session, "level": self.level, "dest": dest, "port": port, "address": address,
                "decision": decision, "rule": rule, "source": source, "reason": reason, "count": count}
        os.write(self.fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        return line

    def close(self) -> None:
        """Close the log's file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read(path: str | Path) -> Iterator[dict[str, Any]]:
    """The decisions in a log, oldest first (a torn last line is skipped)."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            try:
                yield json.loads(line)
            except ValueError:
                continue
