"""Small JSON documents in posture's state dir, read and changed under a file lock."""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Callable

from . import paths


class JsonStore:
    """One JSON object on disk, changed atomically under an exclusive lock."""

    def __init__(self, name: str) -> None:
        self.path = paths.state_dir() / name

    def read(self) -> dict[str, Any]:
        """The document, or {} when it does not exist yet."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def change(self, fn: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply `fn` to the document under the lock, write it back, return fn's result."""
        paths.ensure_private_dir(self.path.parent)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = self.read()
            result = fn(doc)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
            os.replace(tmp, self.path)
            return result
        finally:
            os.close(fd)
