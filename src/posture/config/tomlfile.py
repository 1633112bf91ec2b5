"""Reading a TOML config file: one-line errors with the file and line, a parsed-document cache,
and the line a key stands on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ConfigError


def line_of(text: str, dotted: str) -> int | None:
    """Best-effort line number of `dotted` (e.g. "env.pass") in a TOML document."""
    *tables, key = dotted.split(".")
    table = ".".join(tables)
    current = ""
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    for number, line in enumerate(text.splitlines(), start=1):
        head = header.match(line)
        if head:
            current = head.group(1).replace('"', "").replace(" ", "")
            if not tables and current == key:
                return number
            if current == dotted:
                return number
            continue
        stripped = line.strip()
        m = re.match(r'^"?([A-Za-z0-9_\-.]+)"?\s*=', stripped)
        if not m:
            continue
        full = f"{current}.{m.group(1)}" if current else m.group(1)
        if full.replace('"', "") == dotted or (current == table and m.group(1) == key):
            return number
    return None


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, "", f"cannot read the file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(path, line, "", "the file is not UTF-8 text (expected a TOML document)") from None
    if not text.strip(" \t\n"):  # empty (TOML's own whitespace only): no need to load the parser
        return {}, text
    cached = _parsed_cache(text)
    if cached is not None:
        return cached, text
    import tomllib  # only when there is something new to parse: it costs a few ms to import

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        lineno = int(m.group(1)) if m else None
        what = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
        raise ConfigError(path, lineno, "", f"invalid TOML: {what} (expected a valid TOML document)") from None
    _parsed_store(text, data)
    return data, text


# Parsed TOML documents, by the SHA-256 of their text, as JSON in posture's state dir (outside every
# view): `posture exec` reads its profile on every call, and importing tomllib costs more than
# reading this back. Only documents JSON holds exactly (no dates or times) are kept.

def _parsed_path(text: str) -> Path:
    from ..digest import sha256

    return paths.state_dir() / "cache" / "toml" / f"{sha256(text.encode()).hexdigest()}.json"


def _parsed_cache(text: str) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(_parsed_path(text).read_text())
    except (OSError, ValueError, RuntimeError):
        return None
    return data if isinstance(data, dict) else None


def _parsed_store(text: str, data: dict[str, Any]) -> None:
    import json
    import os

    try:
        encoded = json.dumps(data)
    except (TypeError, ValueError):  # a date or time: not cached
        return
    try:
        path = _parsed_path(text)
        paths.ensure_private_dir(path.parent)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(encoded)
        os.replace(tmp, path)
    except (OSError, RuntimeError):
        pass


