"""The user config's `[credentials.NAME]` tables: where the user keeps an agent credential that is
not where the profile looks for it, and what it stands for inside.

    [credentials.anthropic]
    command = ["pass", "show", "anthropic/api-key"]   # exactly one of: file, env, command
    inside_env = "ANTHROPIC_API_KEY"                  # or inside_file = ".claude/.credentials.json"
    hosts = ["api.anthropic.com"]                     # optional: default the profile's hosts
    profiles = ["claude-code"]                        # optional: default every profile naming it

Only the user's config may say this (a repo's `.posture.toml` naming `[credentials]` is ignored and
reported by `explain`). How the value is fetched at session start is posture.gateway.sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checks as c

SOURCES = ("file", "env", "command")


def _home_file(value: Any) -> str:
    path = c.host_path(value)
    if not Path(path).is_absolute():
        raise ValueError(f"expected an absolute path or one under ~/, got {value!r}")
    return path


def _command(value: Any) -> list[str]:
    argv = c.list_of(c.string, "strings")(value)
    if not argv:
        raise ValueError("expected a command as a non-empty list of strings, such as [\"pass\", \"show\", \"anthropic\"]")
    return argv


def _host(value: Any) -> str:
    text = c.string(value).lower()
    if "/" in text or ":" in text or " " in text:
        raise ValueError(f"expected a host name such as api.anthropic.com, got {value!r}")
    return text


ENTRY: dict[str, Any] = {
    "file": _home_file,
    "env": c.env_name,
    "command": _command,
    "timeout": c.whole(1, 300),
    "inside_env": c.env_name,
    "inside_file": c.repo_path,
    "hosts": c.list_of(_host, "host names"),
    "profiles": c.STR_LIST,
}


def check_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The rules across keys: exactly one source, exactly one thing it stands for inside."""
    given = [k for k in SOURCES if k in entry]
    if len(given) != 1:
        raise c.KeyedError(given[1] if len(given) > 1 else "", "expected exactly one of file = \"~/...\", env = \"VAR\" or "
                           f"command = [\"prog\", ...], got {', '.join(given) or 'none'}")
    inside = [k for k in ("inside_env", "inside_file") if k in entry]
    if len(inside) != 1:
        raise c.KeyedError(inside[1] if len(inside) > 1 else "", "expected exactly one of inside_env = \"ANTHROPIC_API_KEY\" "
                           f"or inside_file = \".claude/.credentials.json\" (what it stands for inside), got {', '.join(inside) or 'none'}")
    if "timeout" in entry and given[0] != "command":
        raise c.KeyedError("timeout", "expected only with command = [...] (a file or a variable is read at once)")
    return entry


CREDENTIALS = c.Named(ENTRY, check_entry)
