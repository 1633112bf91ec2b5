"""User config and `.posture.toml`: load, validate (unknown keys are errors), merge (stricter wins).

The user's config (`$XDG_CONFIG_HOME/posture/config.toml`) may loosen and tighten.
The repo's `.posture.toml` is written by whoever wrote the repo, so it may only
tighten: keys that would loosen are recognised, ignored, and reported by `explain`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import levels, paths
from .errors import ConfigError

REPO_FILE = ".posture.toml"
RULE_NAMES_BUILTIN = ("untrusted_repo", "unfamiliar_mcp", "push_intent", "untrusted_input")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


# ---------------------------------------------------------------- value checkers
# Each checker returns the normalised value or raises ValueError("expected ...").

def _level(value: Any) -> str:
    if not levels.is_level(value):
        raise ValueError(f"expected one of {', '.join(levels.LEVELS)}, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value

    return check


def _list_of(item: Callable[[Any], Any], what: str) -> Callable[[Any], list]:
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


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not ENV_NAME.match(value):
        raise ValueError(f"expected an environment variable name, got {value!r}")
    return value


def _env_pattern(value: Any) -> str:
    if not isinstance(value, str) or not ENV_PATTERN.match(value):
        raise ValueError(f"expected an environment variable name or a NAME_* prefix pattern, got {value!r}")
    return value


def _cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as 203.0.113.0/24, got {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"expected a CIDR such as 203.0.113.0/24, got {value!r}") from None


def _host_path(value: Any) -> str:
    text = _str(value)
    return str(Path(text).expanduser())


def _repo_path(value: Any) -> str:
    text = _str(value)
    norm = Path(text)
    if norm.is_absolute() or ".." in norm.parts:
        raise ValueError(f"expected a path inside the project (relative, no '..'), got {value!r}")
    return str(norm)


def _accel(value: Any) -> str:
    if value not in ("auto", "kvm", "tcg"):
        raise ValueError(f"expected auto, kvm or tcg, got {value!r}")
    return value


def _guest_agent(value: Any) -> str:
    if value not in ("auto", "native", "python"):
        raise ValueError(f"expected auto, native or python, got {value!r}")
    return value


_STR_LIST = _list_of(_str, "strings")
_ENV_LIST = _list_of(_env_name, "environment variable names")
_ENV_PATTERNS = _list_of(_env_pattern, "environment variable names or NAME_* patterns")
_CIDR_LIST = _list_of(_cidr, "CIDRs")
_HOST_PATHS = _list_of(_host_path, "paths")
_REPO_PATHS = _list_of(_repo_path, "paths inside the project")

Schema = dict[str, Any]  # key -> checker, or key -> nested Schema for a table

USER_SCHEMA: Schema = {
    "floor": _level,
    "profile": _str,
    "trusted_remotes": _STR_LIST,
    "identities": _STR_LIST,
    "rules": {name: _level for name in RULE_NAMES_BUILTIN},
    "env": {"pass": _ENV_PATTERNS, "drop": _ENV_LIST},
    "mounts": {"ro": _HOST_PATHS, "rw": _HOST_PATHS},
    "deny": {"paths": _REPO_PATHS},
    "network": {"block": _CIDR_LIST},
    "l2": {"netd_socket": _host_path},
    "l3": {
        "uri": _str,
        "kernel": _host_path,
        "modules": _host_path,
        "initrd": _host_path,
        "memory_mib": _int(128, 65536),
        "cpus": _int(1, 64),
        "accel": _accel,
        "agent": _guest_agent,
        "boot_timeout": _int(5, 3600),
    },
    "l4": {
        "host": _str,
        "user": _str,
        "port": _int(1, 65535),
        "identity": _host_path,
        "workdir": _str,
    },
}

# What a repo file may say; everything here only tightens.
REPO_SCHEMA: Schema = {
    "floor": _level,
    "rules": {name: _level for name in RULE_NAMES_BUILTIN},
    "intent": {"push": _bool, "untrusted_input": _bool},
    "env": {"drop": _ENV_LIST},
    "deny": {"paths": _REPO_PATHS},
    "network": {"block": _CIDR_LIST},
}

# Keys a repo file may not set because they loosen; recognised so they are reported, not guessed at.
REPO_IGNORED = {
    "profile": "the agent to run is the user's choice",
    "trusted_remotes": "trust can only come from the user's config or `posture trust`",
    "identities": "identities can only come from the user's config",
    "env.pass": "passing environment variables loosens; only the user's config may",
    "mounts": "extra mounts loosen; only the user's config may",
    "network.allow": "network exceptions loosen; only the user's config may",
    "l2": "backend settings come from the user's config only",
    "l3": "backend settings come from the user's config only",
    "l4": "backend settings come from the user's config only",
}


def register_rule_names(names: list[str]) -> None:
    """Let plugin rules be remapped in `[rules]` (called by the plugin manager)."""
    for schema in (USER_SCHEMA, REPO_SCHEMA):
        for name in names:
            schema["rules"].setdefault(name, _level)


# ---------------------------------------------------------------- locating keys

def _line_of(text: str, dotted: str) -> int | None:
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


# ---------------------------------------------------------------- parsing

def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
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
        line = int(m.group(1)) if m else None
        what = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
        raise ConfigError(path, line, "", f"invalid TOML: {what} (expected a valid TOML document)") from None
    _parsed_store(text, data)
    return data, text


# Parsed TOML documents, by the SHA-256 of their text, as JSON in posture's state dir (outside every
# view): `posture exec` reads its profile on every call, and importing tomllib costs more than
# reading this back. Only documents JSON holds exactly (no dates or times) are kept.

def _parsed_path(text: str) -> Path:
    from .digest import sha256

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


def _validate(
    data: dict[str, Any],
    schema: Schema,
    path: Path,
    text: str,
    ignored: dict[str, str] | None = None,
    prefix: str = "",
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check `data` against `schema`; return (clean values, [(ignored key, why)])."""
    clean: dict[str, Any] = {}
    skipped: list[tuple[str, str]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if ignored and dotted in ignored:
            skipped.append((dotted, ignored[dotted]))
            continue
        spec = schema.get(key)
        if spec is None:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigError(path, _line_of(text, dotted), dotted, f"unknown key (expected one of: {known})")
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(path, _line_of(text, dotted), dotted, f"expected a table [{dotted}], got {value!r}")
            sub, sub_skipped = _validate(value, spec, path, text, ignored, prefix=f"{dotted}.")
            clean[key] = sub
            skipped.extend(sub_skipped)
            continue
        try:
            clean[key] = spec(value)
        except ValueError as exc:
            raise ConfigError(path, _line_of(text, dotted), dotted, str(exc)) from None
    return clean, skipped


def load_user_config(path: Path | None = None) -> dict[str, Any]:
    """Load and validate the user's config; a missing file is an empty config."""
    path = path or paths.user_config_file()
    if not path.exists():
        return {}
    data, text = _read_toml(path)
    clean, _ = _validate(data, USER_SCHEMA, path, text)
    return clean


def load_repo_config(project: Path) -> tuple[dict[str, Any], list[tuple[str, str]], Path | None]:
    """Load the project's `.posture.toml`: (tightening values, [(ignored key, why)], path or None)."""
    path = project / REPO_FILE
    if not path.is_file():
        return {}, [], None
    data, text = _read_toml(path)
    clean, skipped = _validate(data, REPO_SCHEMA, path, text, ignored=REPO_IGNORED)
    return clean, skipped, path


# ---------------------------------------------------------------- merging

@dataclass
class Settings:
    """The effective settings for one project: user config merged with the repo file, stricter wins."""

    floor: str = "l2"
    profile: str = "claude-code"
    trusted_remotes: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    rule_levels: dict[str, str] = field(default_factory=dict)
    repo_rule_levels: dict[str, str] = field(default_factory=dict)
    env_pass: list[str] = field(default_factory=list)
    env_drop: list[str] = field(default_factory=list)
    mounts_ro: list[str] = field(default_factory=list)
    mounts_rw: list[str] = field(default_factory=list)
    deny_paths: list[str] = field(default_factory=list)
    network_block: list[str] = field(default_factory=list)
    intent_push: bool = False
    intent_untrusted_input: bool = False
    backend: dict[str, dict[str, Any]] = field(default_factory=dict)
    repo_file: str | None = None
    repo_asked: list[str] = field(default_factory=list)
    repo_ignored: list[tuple[str, str]] = field(default_factory=list)

    def rule_level(self, rule: str, default: str) -> str:
        """The level a fired rule maps to: the user's remap (or the default), raised by the repo's."""
        level = self.rule_levels.get(rule, default)
        repo = self.repo_rule_levels.get(rule)
        return levels.highest(level, repo) if repo else level


def _union(*lists: list[str]) -> list[str]:
    out: list[str] = []
    for items in lists:
        for item in items:
            if item not in out:
                out.append(item)
    return out


def merge(user: dict[str, Any], repo: dict[str, Any], repo_ignored: list[tuple[str, str]], repo_path: Path | None) -> Settings:
    """Merge user and repo config: the repo may raise levels and add denials, never loosen."""
    s = Settings()
    s.floor = user.get("floor", "l2")
    s.profile = user.get("profile", "claude-code")
    s.trusted_remotes = list(user.get("trusted_remotes", []))
    s.identities = [i.lower() for i in user.get("identities", [])]
    s.rule_levels = dict(user.get("rules", {}))
    s.env_pass = list(user.get("env", {}).get("pass", []))
    s.env_drop = list(user.get("env", {}).get("drop", []))
    s.mounts_ro = list(user.get("mounts", {}).get("ro", []))
    s.mounts_rw = list(user.get("mounts", {}).get("rw", []))
    s.deny_paths = list(user.get("deny", {}).get("paths", []))
    s.network_block = list(user.get("network", {}).get("block", []))
    s.backend = {name: dict(user.get(name, {})) for name in ("l2", "l3", "l4")}
    s.repo_file = str(repo_path) if repo_path else None
    s.repo_ignored = list(repo_ignored)

    asked = s.repo_asked
    if "floor" in repo:
        if levels.rank(repo["floor"]) > levels.rank(s.floor):
            s.floor = repo["floor"]
            asked.append(f"floor = {repo['floor']}")
        elif repo["floor"] != s.floor:
            s.repo_ignored.append(("floor", f"{repo['floor']} is below the user's floor {s.floor}; a repo may only raise it"))
    for rule, level in repo.get("rules", {}).items():
        s.repo_rule_levels[rule] = level
        asked.append(f"rules.{rule} = {level} (counts only where it raises the rule)")
    intent = repo.get("intent", {})
    if intent.get("push"):
        s.intent_push = True
        asked.append("intent.push = true")
    if intent.get("untrusted_input"):
        s.intent_untrusted_input = True
        asked.append("intent.untrusted_input = true")
    for key in ("push", "untrusted_input"):
        if intent.get(key) is False:
            s.repo_ignored.append((f"intent.{key}", "false cannot withdraw an intent declared elsewhere; it has no effect"))
    drop = repo.get("env", {}).get("drop", [])
    if drop:
        s.env_drop = _union(s.env_drop, drop)
        asked.append(f"env.drop = {drop}")
    deny = repo.get("deny", {}).get("paths", [])
    if deny:
        s.deny_paths = _union(s.deny_paths, deny)
        asked.append(f"deny.paths = {deny}")
    block = repo.get("network", {}).get("block", [])
    if block:
        s.network_block = _union(s.network_block, block)
        asked.append(f"network.block = {block}")
    return s


def load_settings(project: Path, user_config: Path | None = None) -> Settings:
    """Load both files for `project` and merge them."""
    from . import plugins

    plugins.manager()  # plugin rules extend what [rules] accepts
    user = load_user_config(user_config)
    repo, ignored, repo_path = load_repo_config(project)
    return merge(user, repo, ignored, repo_path)
