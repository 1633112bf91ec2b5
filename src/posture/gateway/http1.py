"""HTTP/1.1 framing, read as it streams: a message head, then its body relayed piece by piece.

Bodies are relayed byte for byte as they arrive (a chunked body keeps its chunking), so a
server-sent event reaches the client the moment the upstream sends it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

MAX_HEAD = 256 * 1024
HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer", "upgrade"})


class BadMessage(Exception):
    """The peer sent something that is not HTTP/1.1 as posture reads it."""


@dataclass
class Head:
    """A request or status line and its headers (names as sent, in order)."""

    line: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """The last value of header `name` (any case), or None."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return found

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of header `name`, lower-cased."""
        return {t.strip().lower() for k, v in self.headers if k.lower() == name.lower() for t in v.split(",") if t.strip()}

    def encode(self) -> bytes:
        """The head as sent on the wire."""
        return ("\r\n".join([self.line, *(f"{k}: {v}" for k, v in self.headers)]) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None when the peer closed cleanly before one began."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadMessage("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage("message head too large") from None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # a stray CRLF between messages
    if not lines:
        raise BadMessage("empty message head")
    head = Head(lines[0])
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise BadMessage(f"malformed header line {line[:60]!r}")
        head.headers.append((name, value.strip()))
    return head


def body_kind(head: Head, request: bool, method: str = "", status: int = 0) -> tuple[str, int]:
    """How the body of this message is framed: ("none"|"length"|"chunked"|"close", length)."""
    if not request and (method == "HEAD" or 100 <= status < 200 or status in (204, 304)):
        return "none", 0
    if "chunked" in head.tokens("transfer-encoding"):
        return "chunked", 0
    length = head.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadMessage(f"bad Content-Length {length!r}")
        return ("length", int(length)) if int(length) else ("none", 0)
    if head.get("transfer-encoding"):
        raise BadMessage("unsupported Transfer-Encoding")
    return ("none", 0) if request else ("close", 0)


async def relay_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: str, length: int) -> None:
    """Copy one body from `reader` to `writer` as it arrives (the framing bytes too)."""
    if kind == "none":
        return
    if kind == "length":
        await _copy(reader, writer, length)
    elif kind == "close":
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()
    else:
        while True:
            line = await reader.readuntil(b"\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadMessage("bad chunk size") from None
            writer.write(line)
            if size == 0:
                while True:  # trailers up to the empty line
                    trailer = await reader.readuntil(b"\n")
                    writer.write(trailer)
                    if trailer.strip() == b"":
                        await writer.drain()
                        return
            await _copy(reader, writer, size)
            writer.write(await reader.readexactly(2))
            await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> None:
    while count > 0:
        data = await reader.read(min(count, 65536))
        if not data:
            raise BadMessage("connection closed inside a body")
        writer.write(data)
        count -= len(data)
        await writer.drain()


async def discard_body(reader: asyncio.StreamReader, kind: str, length: int) -> None:
    """Read and drop one body (a refused request's)."""

    class _Null:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            pass

    await relay_body(reader, _Null(), kind, length)  # type: ignore[arg-type]
