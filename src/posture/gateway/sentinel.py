"""Per-session sentinels of the same shape as the real credentials.

A sentinel keeps the real value's recognisable prefix (`sk-ant-api03-`, `sk-ant-oat01-`,
`sk-proj-`, ...) and its length, with random characters in place of the secret part, so the
agent accepts it; it is worthless anywhere but at this session's gateway.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # 64: a byte & 63 picks uniformly
_PREFIX = re.compile(r"^(?:sk-ant-[a-z]+\d*-|sk-proj-|sk-svcacct-|sk-|ghp_|gho_|xox[abp]-)")
MIN_RANDOM = 40  # never fewer random characters than this, whatever the real value's length
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z: the agent never refreshes inside
# Keys of a JSON credential file whose string values are secrets (everything else is copied).
SECRET_KEYS = re.compile(r"(token|key|secret|password)", re.IGNORECASE)
EXPIRY_KEYS = ("expiresAt", "expires_at", "expiry")


def make(real: str) -> str:
    """A random sentinel shaped like `real`."""
    match = _PREFIX.match(real)
    prefix = match.group(0) if match else ""
    length = max(len(real) - len(prefix), MIN_RANDOM)
    return prefix + "".join(_ALPHABET[b & 63] for b in os.urandom(length))


def json_file(doc: Any, keep: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    """A copy of a JSON credential document with every secret string replaced by a sentinel (the
    one `keep` has for its path, else a new one) and every expiry pushed to the far future; and the
    map {json path: sentinel} of what was replaced (paths like "claudeAiOauth.accessToken"), so the
    broker knows which sentinel stands for what."""
    swapped: dict[str, str] = {}
    keep = keep or {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                path = f"{where}.{key}" if where else str(key)
                if key in EXPIRY_KEYS and isinstance(value, (int, float)):
                    out[key] = FAR_FUTURE_MS if value > 10**11 else FAR_FUTURE_MS // 1000
                elif isinstance(value, str) and SECRET_KEYS.search(str(key)) and value:
                    out[key] = swapped[path] = keep.get(path) or make(value)
                else:
                    out[key] = walk(value, path)
            return out
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(doc, ""), swapped


def dumps(doc: Any) -> str:
    """The sentinel document as the agent's own tools would write it."""
    return json.dumps(doc, indent=2) + "\n"
