"""The network helper's bounds: what one local user may hold, and the refusals that name them.

Every local user can reach the helper's socket, so each of them is bounded on its own:
connections open at once, sandboxes attached at once, and the time a connection may take
to send its request. Protocol bounds (request size, JSON nesting) are fixed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

MAX_REQUEST = 16 * 1024  # bytes in one request line (an attach with 256 extra blocks fits in ~12 KiB)
MAX_DEPTH = 4  # JSON nesting of a request: {"block": ["..."]} is 2
MAX_BLOCKS = 256  # extra blocked ranges in one attach
WORKERS = 4  # threads that run requests (attach, release, status) and clean-ups


@dataclass(frozen=True)
class Limits:
    """The bounds one helper enforces (each a `posture netd` flag of the same name)."""

    max_connections: int = 1000  # connections open at once, all users together
    max_per_uid: int = 64  # connections open at once by one uid
    max_sessions_per_uid: int = 32  # sandboxes attached at once by one uid
    request_timeout: float = 5.0  # seconds a connection has to send its whole request line

    def argv(self) -> list[str]:
        """The flags that give these limits to `posture netd` (only those that differ from the defaults)."""
        out: list[str] = []
        default = Limits()
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out += [flag(f.name), f"{value:g}" if isinstance(value, float) else str(value)]
        return out

    def check(self) -> None:
        """Raise ValueError naming the flag when a limit is not a positive number."""
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{flag(f.name)} must be a positive number, not {getattr(self, f.name)!r}")


def flag(name: str) -> str:
    """The `posture netd` flag of the limit `name` (max_per_uid -> --max-per-uid)."""
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the limit flags to `posture netd`'s argument parser."""
    d = Limits()
    parser.add_argument(flag("max_connections"), type=int, default=d.max_connections,
                        help=f"connections open at once, all users together (default {d.max_connections})")
    parser.add_argument(flag("max_per_uid"), type=int, default=d.max_per_uid,
                        help=f"connections open at once by one uid (default {d.max_per_uid})")
    parser.add_argument(flag("max_sessions_per_uid"), type=int, default=d.max_sessions_per_uid,
                        help=f"sandboxes attached at once by one uid (default {d.max_sessions_per_uid})")
    parser.add_argument(flag("request_timeout"), type=float, default=d.request_timeout,
                        help=f"seconds a connection has to send its request (default {d.request_timeout:g})")


def from_args(args: Any) -> Limits:
    """The limits parsed by a parser that `add_arguments` set up."""
    limits = Limits(args.max_connections, args.max_per_uid, args.max_sessions_per_uid, args.request_timeout)
    limits.check()
    return limits


def message(name: str, detail: str, value: Any) -> str:
    """One line: what was reached, the limit, and the flag that raises it."""
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{detail} (limit {flag(name)} {shown}; root can raise it with `posture netd {flag(name)} N`)"


def refusal(name: str, detail: str, value: Any) -> dict[str, Any]:
    """The answer refusing a request at limit `name` (code `limit`)."""
    return {"ok": False, "code": "limit", "limit": name, "error": message(name, detail, value)}
