"""Refreshing an OAuth access token outside the boundary.

The agent inside holds a sentinel with a far-future expiry, so it never refreshes; the
gateway refreshes the real token when it nears its expiry, and writes the refreshed token
back to the user's own credential file on the host (where the agent outside posture keeps it),
never into the session.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

# Claude Code's OAuth client (as its CLI ships it); `token_url` may be overridden per plan.
FORMATS: dict[str, dict[str, str]] = {
    "claude-oauth": {"token_url": "https://platform.claude.com/v1/oauth/token", "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e"},
}
MARGIN_MS = 5 * 60 * 1000  # refresh this long before the expiry


class RefreshError(Exception):
    """The token could not be refreshed."""


class Refresher:
    """The live access token of one OAuth credential file."""

    def __init__(self, spec: dict[str, Any]) -> None:
        fmt = FORMATS.get(spec.get("format", ""), {})
        self.token_url = spec.get("token_url") or fmt.get("token_url", "")
        self.client_id = spec.get("client_id") or fmt.get("client_id", "")
        self.file = Path(spec["file"])
        self.path = spec["path"]  # the object holding accessToken, e.g. "claudeAiOauth"
        self.doc: dict[str, Any] = dict(spec.get("doc") or {})
        self.lock = asyncio.Lock()
        self.refreshed = 0

    def _fresh(self, doc: dict[str, Any]) -> bool:
        expires = doc.get("expiresAt")
        return bool(doc.get("accessToken")) and (not isinstance(expires, (int, float)) or expires - time.time() * 1000 > MARGIN_MS)

    async def token(self) -> str:
        """The access token to inject now (refreshed first when it is about to expire)."""
        if self._fresh(self.doc):
            return str(self.doc["accessToken"])
        async with self.lock:
            if not self._fresh(self.doc):
                self.doc = await asyncio.get_running_loop().run_in_executor(None, self._refresh)
        return str(self.doc["accessToken"])

    def _on_disk(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.file.read_text())[self.path])
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _refresh(self) -> dict[str, Any]:
        disk = self._on_disk()
        if self._fresh(disk):
            return disk  # the user's own agent outside refreshed it meanwhile: use theirs
        refresh = disk.get("refreshToken") or self.doc.get("refreshToken")
        if not refresh or not self.token_url:
            raise RefreshError(f"{self.file}: the token expired and there is no way to refresh it")
        body = json.dumps({"grant_type": "refresh_token", "refresh_token": refresh, "client_id": self.client_id}).encode()
        req = urllib.request.Request(self.token_url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise RefreshError(f"refreshing the token of {self.file} failed: {exc}") from None
        new = dict(disk or self.doc)
        new["accessToken"] = answer["access_token"]
        new["refreshToken"] = answer.get("refresh_token") or refresh
        if answer.get("expires_in"):
            new["expiresAt"] = int(time.time() * 1000 + float(answer["expires_in"]) * 1000)
        self._write_back(new)
        self.refreshed += 1
        return new

    def _write_back(self, new: dict[str, Any]) -> None:
        """Store the refreshed token in the user's own file (atomically, 0600), keeping its other keys."""
        try:
            whole = json.loads(self.file.read_text())
        except (OSError, ValueError):
            whole = {}
        whole[self.path] = new
        tmp = self.file.with_name(f".{self.file.name}.posture{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(whole, fh)
        os.replace(tmp, self.file)
