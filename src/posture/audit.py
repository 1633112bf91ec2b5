"""Append-only, hash-chained event log, kept in posture's state dir outside every sandbox.

Each line is one JSON record: {"seq", "time", "event", "data", "prev", "hash"} where
`hash` is the SHA-256 of the canonical JSON of the record without `hash`, and `prev`
is the previous record's hash (64 zeros for the first). Changing, removing or
reordering any record breaks the chain from that record on.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import paths
from .digest import sha256

GENESIS = "0" * 64


def log_path() -> Path:
    """Path of the audit log."""
    return paths.state_dir() / "audit.log"


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256(canonical.encode()).hexdigest()


def _last_record(fh) -> dict[str, Any] | None:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return None
    block = min(size, 1 << 16)
    while True:
        fh.seek(size - block)
        tail = fh.read(block)
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or block == size:
            return json.loads(lines[-1])
        block = min(size, block * 4)


def record(event: str, **data: Any) -> dict[str, Any]:
    """Append one event to the log and return the record written."""
    path = log_path()
    paths.ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        last = _last_record(fh)
        rec: dict[str, Any] = {
            "seq": (last["seq"] + 1) if last else 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
            "data": data,
            "prev": last["hash"] if last else GENESIS,
        }
        rec["hash"] = _digest(rec)
        fh.write((json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())
    return rec


def read() -> Iterator[dict[str, Any]]:
    """Yield the log's records in order (no verification)."""
    path = log_path()
    if not path.exists():
        return
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                yield json.loads(raw)


@dataclass
class Verdict:
    """Result of verifying the chain: ok, how many records, and the first broken one."""

    ok: bool
    records: int
    broken_at: int | None = None
    reason: str = ""


def verify() -> Verdict:
    """Check every record's hash and link; report the first broken record (1-based line)."""
    path = log_path()
    if not path.exists():
        return Verdict(True, 0)
    prev = GENESIS
    count = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                return Verdict(False, count, lineno, "empty line in the log")
            try:
                rec = json.loads(raw)
            except ValueError:
                return Verdict(False, count, lineno, "record is not valid JSON")
            if not isinstance(rec, dict) or "hash" not in rec:
                return Verdict(False, count, lineno, "record has no hash")
            if rec.get("prev") != prev:
                return Verdict(False, count, lineno, "link to the previous record is broken")
            if rec.get("seq") != count + 1:
                return Verdict(False, count, lineno, f"sequence number {rec.get('seq')} where {count + 1} was due")
            if _digest(rec) != rec["hash"]:
                return Verdict(False, count, lineno, "record was changed after it was written")
            prev = rec["hash"]
            count += 1
    return Verdict(True, count)
