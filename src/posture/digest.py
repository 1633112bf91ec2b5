"""SHA-256 for the hot path (project keys, the audit chain, MCP fingerprints, the TOML cache).

The builtin implementation: importing hashlib loads OpenSSL, a few ms on every posture call.
The digests are the same; backends off the hot path may use hashlib directly.
"""

from __future__ import annotations

try:
    from _sha256 import sha256
except ImportError:  # Python >= 3.12 names it _sha2; any other build has hashlib
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

__all__ = ["sha256"]
