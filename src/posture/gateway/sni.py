"""Reading the server name (SNI) out of a TLS ClientHello, as it arrives on a CONNECT tunnel.

Only what the check needs: TLS records of type handshake, reassembled up to one ClientHello,
then the server_name extension's host_name. Nothing is decrypted or changed; the bytes read
are handed back to be sent on unchanged.
"""

from __future__ import annotations

import asyncio

MAX_HELLO = 64 * 1024
HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
# A fatal TLS alert, access_denied (49): what a refused tunnel sends before it closes.
ALERT_ACCESS_DENIED = bytes([21, 3, 3, 0, 2, 2, 49])


class NotTLS(Exception):
    """The tunnel's first bytes are not a TLS ClientHello."""


def looks_like_tls(first: bytes) -> bool:
    """True when `first` (at least one byte) starts a TLS handshake record."""
    return bool(first) and first[0] == HANDSHAKE


async def read_client_hello(reader: asyncio.StreamReader, first: bytes = b"") -> tuple[bytes, str | None]:
    """Read TLS records up to a whole ClientHello (`first`: bytes of it already read): (every byte
    read, `first` included; the SNI host name or None)."""
    raw = b""
    body = b""
    need: int | None = None
    while need is None or len(body) < need:
        header = first + await reader.readexactly(5 - len(first))
        first = b""
        if header[0] != HANDSHAKE or header[1] != 3:
            raise NotTLS("not a TLS handshake record")
        size = int.from_bytes(header[3:5], "big")
        fragment = await reader.readexactly(size)
        raw += header + fragment
        body += fragment
        if len(raw) > MAX_HELLO:
            raise NotTLS("ClientHello too large")
        if need is None and len(body) >= 4:
            if body[0] != CLIENT_HELLO:
                raise NotTLS("the first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(body[1:4], "big")
    return raw, server_name(body[4:need])


def server_name(hello: bytes) -> str | None:
    """The host_name of the server_name extension of a ClientHello body, or None (NotTLS if malformed)."""
    try:
        at = 2 + 32  # client_version, random
        at += 1 + hello[at]  # session_id
        at += 2 + int.from_bytes(hello[at:at + 2], "big")  # cipher_suites
        at += 1 + hello[at]  # compression_methods
        if at >= len(hello):
            return None  # no extensions
        end = at + 2 + int.from_bytes(hello[at:at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(hello[at:at + 2], "big")
            size = int.from_bytes(hello[at + 2:at + 4], "big")
            data = hello[at + 4:at + 4 + size]
            at += 4 + size
            if kind != EXT_SERVER_NAME:
                continue
            pos = 2  # server_name_list length
            while pos + 3 <= len(data):
                name_type = data[pos]
                length = int.from_bytes(data[pos + 1:pos + 3], "big")
                name = data[pos + 3:pos + 3 + length]
                pos += 3 + length
                if name_type == 0:
                    return name.decode("ascii").lower().rstrip(".")
            return None
    except (IndexError, UnicodeDecodeError):
        raise NotTLS("malformed ClientHello") from None
    return None
