"""Value checkers for config tables: each returns the normalised value or raises
ValueError("expected ..."). Backends use them to declare their own tables."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Callable

from .. import levels

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")

Checker = Callable[[Any], Any]


class KeyedError(ValueError):
    """A value error about one key of a table (`key`), raised by a `Named` table's `whole` check."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Named:
    """A table of named sub-tables (`[credentials.NAME]`): each checked against `schema`, then as a
    whole by `whole` (cross-key rules; it raises KeyedError naming the key)."""

    NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

    def __init__(self, schema: dict[str, Any], whole: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.schema = schema
        self.whole = whole

def level(value: Any) -> str:
    if not levels.is_level(value):
        raise ValueError(f"expected one of {', '.join(levels.LEVELS)}, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def whole(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value

    return check


def list_of(item: Callable[[Any], Any], what: str) -> Callable[[Any], list]:
    def check(value: Any) -> list:
        if not isinstance(value, list):
            raise ValueError(f"expected a list of {what}, got {value!r}")
        out = []
        for entry in value:
            try:
                out.append(item(entry))
            except ValueError as exc:
                raise ValueError(f"expected a list of {what}; entry {entry!r}: {exc}") from None
        return out

    return check


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not ENV_NAME.match(value):
        raise ValueError(f"expected an environment variable name, got {value!r}")
    return value


def env_pattern(value: Any) -> str:
    if not isinstance(value, str) or not ENV_PATTERN.match(value):
        raise ValueError(f"expected an environment variable name or a NAME_* prefix pattern, got {value!r}")
    return value


def cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as 203.0.113.0/24, got {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"expected a CIDR such as 203.0.113.0/24, got {value!r}") from None


def egress_entry(value: Any) -> str:
    """One `[network] allow` entry (name, *.domain, name:port or CIDR), normalised."""
    from ..gateway.allowlist import parse_entry

    return parse_entry(value).text


def host_path(value: Any) -> str:
    text = string(value)
    return str(Path(text).expanduser())


def repo_path(value: Any) -> str:
    text = string(value)
    norm = Path(text)
    if norm.is_absolute() or ".." in norm.parts:
        raise ValueError(f"expected a path inside the project (relative, no '..'), got {value!r}")
    return str(norm)


def one_of(*choices: str) -> Checker:
    """A checker that accepts exactly one of `choices`."""
    words = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected {words}, got {value!r}")
        return value

    return check


STR_LIST = list_of(string, "strings")
ENV_LIST = list_of(env_name, "environment variable names")
ENV_PATTERNS = list_of(env_pattern, "environment variable names or NAME_* patterns")
CIDR_LIST = list_of(cidr, "CIDRs")
ALLOW_LIST = list_of(egress_entry, "host names, *.domains, name:port entries or CIDRs")
NETWORK_MODE = one_of("public", "allowlist", "none")
HOST_PATHS = list_of(host_path, "paths")
REPO_PATHS = list_of(repo_path, "paths inside the project")
