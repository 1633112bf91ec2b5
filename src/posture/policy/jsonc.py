"""JSON with comments (JSONC) as VS Code defines it for its config files: `//` line comments,
`/* */` block comments and trailing commas before `]` or `}`, all outside strings. Nothing else
is relaxed: no single quotes, no bare keys, no NaN. Anything else that is not JSON fails (ValueError).

Comments and trailing commas are blanked to spaces (line breaks kept), so the text keeps its
length and a JSON error still names the right line and column of the original file.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SPECIAL = re.compile(r'["/\]}]')  # outside strings: what can start a string or comment, or close a container
_IN_STRING = re.compile(r'["\\]')
_WS = " \t\n\r"


def _blank(buf: list[str], start: int, end: int) -> None:
    for i in range(start, end):
        if buf[i] not in "\n\r":
            buf[i] = " "


def _previous(buf: list[str], pos: int) -> int:
    """Index of the last non-whitespace character before `pos`, or -1."""
    pos -= 1
    while pos >= 0 and buf[pos] in _WS:
        pos -= 1
    return pos


def strip(text: str) -> str:
    """`text` with its comments and trailing commas blanked out; an unterminated comment raises."""
    buf = list(text)
    pos, size = 0, len(text)
    while True:
        found = _SPECIAL.search(text, pos)
        if found is None:
            break
        at, char = found.start(), found.group()
        if char == '"':
            pos = at + 1
            while True:  # to the closing quote; an unterminated string is left for json to report
                inner = _IN_STRING.search(text, pos)
                if inner is None:
                    return "".join(buf)
                pos = inner.start() + (2 if inner.group() == "\\" else 1)
                if inner.group() == '"':
                    break
        elif char == "/":
            nxt = text[at + 1 : at + 2]
            if nxt == "/":
                end = at + 2
                while end < size and text[end] not in "\n\r":
                    end += 1
                _blank(buf, at, end)
                pos = end
            elif nxt == "*":
                close = text.find("*/", at + 2)
                if close < 0:
                    raise json.JSONDecodeError("unterminated /* comment", text, at)
                _blank(buf, at, close + 2)
                pos = close + 2
            else:
                pos = at + 1  # a lone slash: json reports it
        else:  # ] or }: drop one trailing comma, but never the only thing in a container ([,] stays an error)
            comma = _previous(buf, at)
            if comma >= 0 and buf[comma] == ",":
                before = _previous(buf, comma)
                if before >= 0 and buf[before] not in "[{,":
                    buf[comma] = " "
            pos = at + 1
    return "".join(buf)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str, *, comments: bool = True) -> Any:
    """Parse JSONC (or strict JSON with `comments=False`); every failure is a ValueError
    (json.JSONDecodeError, with line and column, where the position is known)."""
    if comments and text.startswith("\ufeff"):  # VS Code reads past a byte-order mark
        text = " " + text[1:]
    try:
        return json.loads(strip(text) if comments else text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def describe_error(exc: Exception) -> str:
    """A short reason for a parse failure: 'line L, column C: what' where known."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return str(exc) or exc.__class__.__name__
