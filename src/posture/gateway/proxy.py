"""The gateway's reverse proxy: a request must carry the session's sentinel; the sentinel is
swapped for the real credential only when the upstream is one of that credential's hosts; the
answer streams back as it arrives.

A request without any sentinel gets 403 and nothing is sent upstream. Upstream connections
are kept alive and reused; a client that goes away mid-stream costs only its own upstream
connection.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

from . import http1
from .http1 import BadMessage, Head
from .oauth import Refresher, RefreshError

MAX_BODY = 64 * 1024 * 1024
POOL_MAX = 8


class _Sink:
    """Collects a relayed body in memory (a request body is sent again on a retry)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_BODY:
            raise BadMessage("request body too large")
        self.parts.append(data)

    async def drain(self) -> None:
        pass


class Gateway:
    """One session's gateway: its upstream, its sentinels, its upstream connection pool."""

    def __init__(self, plan: dict[str, Any]) -> None:
        up = urlsplit(plan["upstream"])
        if up.scheme not in ("http", "https") or not up.hostname:
            raise ValueError(f"upstream {plan['upstream']!r} is not an http(s) URL")
        self.tls = up.scheme == "https"
        self.host = up.hostname.lower()
        self.port = up.port or (443 if self.tls else 80)
        self.netloc = up.netloc.rsplit("@", 1)[-1]
        self._ssl: ssl.SSLContext | None = None
        self.swaps: list[dict[str, Any]] = list(plan.get("swaps") or [])
        self.refreshers = {s["sentinel"]: Refresher(s["oauth"]) for s in self.swaps if s.get("oauth")}
        self.pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.stats = {"requests": 0, "refused": 0, "injected": 0}
        self.egress: Any = None  # the session's forward proxy (modes allowlist and none): absolute-form and CONNECT requests
        if plan.get("egress"):
            from .egress import Egress

            self.egress = Egress.from_plan(plan["egress"])

    @property
    def ssl(self) -> ssl.SSLContext | None:
        """The TLS context toward the upstream (the system's CA store), made on first use."""
        if self.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    # ------------------------------------------------------------ one client connection
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one client connection until it closes."""
        try:
            while await self._one(reader, writer):
                pass
        except (BadMessage, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self._answer(writer, 400, f"posture gateway: {exc}")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await http1.read_head(reader)
        if head is None:
            return False
        self.stats["requests"] += 1
        method, target, version = (head.line.split(" ") + ["", ""])[:3]
        if self.egress is not None and (method == "CONNECT" or not target.startswith("/")):
            return await self.egress.handle(head.line, head.headers, reader, writer)
        kind, length = http1.body_kind(head, request=True)
        if not target.startswith("/") or not version.startswith("HTTP/1."):
            await http1.discard_body(reader, kind, length)
            await self._answer(writer, 403, "posture gateway: only requests for the agent's API are served here")
            return False
        used = [s for s in self.swaps if any(s["sentinel"] in v for _, v in head.headers)]
        if not used:
            self.stats["refused"] += 1
            self._log("refused", "no sentinel", "the request does not carry the session's credential")
            await http1.discard_body(reader, kind, length)
            await self._answer(writer, 403, "posture gateway: this request does not carry the session's credential")
            return "close" not in head.tokens("connection")
        if "100-continue" in head.tokens("expect"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the body is read here in full (a retry may resend it)
            head.headers = [(k, v) for k, v in head.headers if k.lower() != "expect"]
        sink = _Sink()
        await http1.relay_body(reader, sink, kind, length)  # type: ignore[arg-type]
        try:
            upstream_head = await self._rewrite(head, used)
        except RefreshError as exc:
            await self._answer(writer, 401, f"posture gateway: {exc}")
            return False
        keep = "close" not in head.tokens("connection") and version == "HTTP/1.1"
        return await self._forward(upstream_head, b"".join(sink.parts), method, writer, keep)

    async def _rewrite(self, head: Head, used: list[dict[str, Any]]) -> Head:
        """The request as the upstream gets it: its Host, no hop-by-hop headers, sentinels swapped
        for real values only where the upstream is one of the credential's hosts (else removed)."""
        drop = http1.HOP | head.tokens("connection")
        out = Head(head.line)
        for name, value in head.headers:
            low = name.lower()
            if low in drop or low == "host":
                continue
            for swap in used:
                if swap["sentinel"] not in value:
                    continue
                if self.host in swap["hosts"]:
                    refresher = self.refreshers.get(swap["sentinel"])
                    real = await refresher.token() if refresher else swap["real"]
                    value = value.replace(swap["sentinel"], real)
                    self.stats["injected"] += 1
                else:
                    value = ""  # not this credential's host: nothing injected, the sentinel not sent on
            if value:
                out.headers.append((name, value))
        out.headers.insert(0, ("Host", self.netloc))
        return out

    async def _forward(self, head: Head, body: bytes, method: str, writer: asyncio.StreamWriter, keep: bool) -> bool:
        for attempt in (0, 1):
            pooled = attempt == 0 and bool(self.pool)
            try:
                ur, uw = self.pool.pop() if pooled else await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.tls else None)
            except OSError as exc:
                await self._answer(writer, 502, f"posture gateway: cannot reach {self.netloc}: {exc}")
                return False
            if not pooled:
                peer = uw.get_extra_info("peername")
                self._log("allowed", "the agent's API", "brokered", peer[0] if peer else None)
            try:
                uw.write(head.encode() + body)
                await uw.drain()
                answer = await http1.read_head(ur)
            except (ConnectionError, OSError, BadMessage, asyncio.IncompleteReadError):
                answer = None
            if answer is None:
                uw.close()
                if pooled:
                    continue  # a kept-alive connection the upstream had closed: once more, fresh
                await self._answer(writer, 502, f"posture gateway: {self.netloc} closed the connection")
                return False
            return await self._respond(answer, ur, uw, method, writer, keep)
        return False

    async def _respond(self, answer: Head, ur: asyncio.StreamReader, uw: asyncio.StreamWriter, method: str,
                       writer: asyncio.StreamWriter, keep: bool) -> bool:
        try:
            status = int(answer.line.split(" ")[1])
        except (IndexError, ValueError):
            uw.close()
            raise BadMessage("upstream sent a malformed status line") from None
        kind, length = http1.body_kind(answer, request=False, method=method, status=status)
        upstream_keep = "close" not in answer.tokens("connection") and kind != "close"
        drop = http1.HOP | answer.tokens("connection")
        out = Head(answer.line, [(k, v) for k, v in answer.headers if k.lower() not in drop])
        keep = keep and kind != "close"
        if not keep:
            out.headers.append(("Connection", "close"))
        try:
            writer.write(out.encode())
            await http1.relay_body(ur, writer, kind, length)
        except (ConnectionError, OSError, BadMessage, asyncio.IncompleteReadError):
            uw.close()  # the client left mid-answer (or the upstream broke): drop this upstream connection
            return False
        if upstream_keep and len(self.pool) < POOL_MAX and not ur.at_eof():
            self.pool.append((ur, uw))
        else:
            uw.close()
        return keep

    def _log(self, decision: str, rule: str, reason: str, address: str | None = None) -> None:
        """The agent's API traffic in the session's egress log (each new upstream connection; each refusal)."""
        log = self.egress.log if self.egress is not None else None
        if log is not None:
            log.write(self.host, self.port, address, decision, rule, reason=reason)

    async def _answer(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        body = json.dumps({"type": "error", "error": {"type": "permission_error" if status == 403 else "api_error", "message": message}}).encode()
        reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 502: "Bad Gateway"}.get(status, "Error")
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        if status != 403:
            print(f"posture gateway: {status} {message}", file=sys.stderr, flush=True)
