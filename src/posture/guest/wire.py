"""The exec channel's wire format, shared by the host client and the in-sandbox agent.

Standard library only: this file is also copied into sandboxes and guests, where it
runs under the system's python3.

A frame is a 9-byte header (payload length: u32, stream id: u32, type: u8, big-endian)
followed by the payload. One connection may carry several streams (one per command),
which the virtio-serial port of a VM needs; a unix socket uses the same format.
"""

from __future__ import annotations

import json
import os
import struct

HEADER = struct.Struct(">IIB")
MAX_PAYLOAD = 1 << 20

# client -> agent
OPEN = 1  # json: {"argv": [...], "env": {...}, "cwd": str, "tty": bool, "rows": int, "cols": int}
STDIN = 2  # bytes
STDIN_EOF = 3  # empty
RESIZE = 4  # json: {"rows": int, "cols": int}
SIGNAL = 5  # json: {"signal": int}
# agent -> client
STARTED = 16  # json: {"pid": int}
STDOUT = 17  # bytes
STDERR = 18  # bytes
EXIT = 19  # json: {"code": int} (128+N when killed by signal N)
ERROR = 20  # json: {"message": str}
HELLO = 21  # json: {"agent": "posture", "version": 1}  (sent by the agent when a connection opens)


def pack(stream: int, kind: int, payload: bytes = b"") -> bytes:
    """One frame."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("frame too large")
    return HEADER.pack(len(payload), stream, kind) + payload


def pack_json(stream: int, kind: int, obj: object) -> bytes:
    """One frame with a JSON payload."""
    return pack(stream, kind, json.dumps(obj).encode())


class Reader:
    """Incremental frame parser: feed bytes, take complete frames."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Add bytes; return every complete (stream, type, payload) frame."""
        self.buf += data
        frames = []
        while len(self.buf) >= HEADER.size:
            length, stream, kind = HEADER.unpack_from(self.buf)
            if length > MAX_PAYLOAD:
                raise ValueError("frame too large")
            end = HEADER.size + length
            if len(self.buf) < end:
                break
            frames.append((stream, kind, bytes(self.buf[HEADER.size:end])))
            del self.buf[:end]
        return frames


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (blocking)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
