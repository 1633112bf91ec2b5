"""Checking one request line before the helper acts on it: size, nesting, op, and each field's type.

A request is one JSON object on one line. Each op declares its fields (a `Schema`); a field
of the wrong type, an unknown field or a missing one is refused with one line naming it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import NetdError
from .limits import MAX_BLOCKS, MAX_DEPTH, MAX_REQUEST

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PID_MAX = 1 << 22  # the kernel's largest pid_max


class BadRequest(NetdError):
    """A request the helper will not read (code `invalid`)."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid", message)


@dataclass(frozen=True)
class Field:
    """One field of a request: its check (returns the clean value or raises BadRequest)."""

    check: Callable[[str, Any], Any]
    required: bool = True
    default: Any = None


Schema = dict[str, Field]


def depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text `data` (brackets inside strings do not count)."""
    deepest = level = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            level += 1
            deepest = max(deepest, level)
        elif byte in (0x5D, 0x7D):  # ] }
            level -= 1
    return deepest


def parse(line: bytes) -> dict[str, Any]:
    """The request object in `line` (one line of JSON), or BadRequest saying what is wrong with it."""
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"request larger than {MAX_REQUEST} bytes")
    if depth(line) > MAX_DEPTH:
        raise BadRequest(f"request nested deeper than {MAX_DEPTH} levels")
    try:
        req = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request is not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"request must be a JSON object, not {type(req).__name__}")
    return req


def check(req: dict[str, Any], schemas: dict[str, Schema]) -> tuple[str, dict[str, Any]]:
    """The op of `req` and its fields, checked against `schemas[op]` (unknown ops and fields are refused)."""
    op = req.get("op")
    if not isinstance(op, str) or op not in schemas:
        raise BadRequest(f"unknown op {op!r} (known: {', '.join(sorted(schemas))})")
    schema = schemas[op]
    unknown = sorted(k for k in req if k != "op" and k not in schema)
    if unknown:
        raise BadRequest(f"op {op}: unknown field {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, field in schema.items():
        if name not in req:
            if field.required:
                raise BadRequest(f"op {op}: missing field {name!r}")
            out[name] = field.default
            continue
        out[name] = field.check(f"{op}.{name}", req[name])
    return op, out


# ------------------------------------------------------------------ field checks
def session_id(where: str, value: Any) -> str:
    """A session id: letters, digits, `_.-`, at most 64, no path characters."""
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, not {type(value).__name__}")
    if not SESSION_ID.match(value):
        raise BadRequest(f"invalid session id {value[:80]!r} (letters, digits and _.- only, at most 64)")
    return value


def pid(where: str, value: Any) -> int:
    """A process id: an integer (not a boolean) between 1 and the kernel's largest pid."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where} must be an integer, not {type(value).__name__}")
    if not 1 <= value < PID_MAX:
        raise BadRequest(f"{where} {value} is not a process id")
    return value


def boolean(where: str, value: Any) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise BadRequest(f"{where} must be true or false, not {type(value).__name__}")
    return value


def networks(where: str, value: Any) -> list[str]:
    """A list of at most MAX_BLOCKS address ranges (CIDR strings), normalised."""
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a list of address ranges, not {type(value).__name__}")
    if len(value) > MAX_BLOCKS:
        raise BadRequest(f"{where} has {len(value)} ranges, at most {MAX_BLOCKS}")
    out = []
    for item in value:
        if not isinstance(item, str) or len(item) > 64:
            raise BadRequest(f"{where} must hold address ranges as strings, not {type(item).__name__}")
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise BadRequest(f"{where}: {item!r} is not an address range") from None
    return out


STATUS: Schema = {}
ATTACH: Schema = {
    "session": Field(session_id),
    "pid": Field(pid),
    "ipv6": Field(boolean, required=False),
    "block": Field(networks, required=False, default=()),
    "network": Field(boolean, required=False, default=True),  # false: no slirp4netns (loopback only; the gateway is the way out)
}
RELEASE: Schema = {"session": Field(session_id)}


def vm_action(where: str, value: Any) -> str:
    """attach or release."""
    if value not in ("attach", "release"):
        raise BadRequest(f"{where} must be attach or release, not {str(value)[:40]!r}")
    return value


UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def uuid(where: str, value: Any) -> str:
    """A domain's UUID, lower-case."""
    if not isinstance(value, str) or not UUID.match(value.lower()):
        raise BadRequest(f"{where} must be a domain UUID")
    return value.lower()


VM: Schema = {
    "action": Field(vm_action),
    "session": Field(session_id),
    "uuid": Field(uuid, required=False, default=""),
    "block": Field(networks, required=False, default=[]),
}
DROPS: Schema = {"session": Field(session_id)}
