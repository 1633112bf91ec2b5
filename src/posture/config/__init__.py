"""User config and `.posture.toml`: load, validate (unknown keys are errors), merge (stricter wins).

The user's config (`$XDG_CONFIG_HOME/posture/config.toml`) may loosen and tighten.
The repo's `.posture.toml` is written by whoever wrote the repo, so it may only
tighten: keys that would loosen are recognised, ignored, and reported by `explain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import levels, paths
from ..errors import ConfigError
from . import checks as c
from .credentials import CREDENTIALS
from .tomlfile import line_of, read_toml

REPO_FILE = ".posture.toml"
RETENTION_DAYS = 14  # default of [sessions] retention_days
RULE_NAMES_BUILTIN = ("untrusted_repo", "unfamiliar_mcp", "push_intent", "untrusted_input")

Schema = dict[str, Any]  # key -> checker, or key -> nested Schema for a table
# What a live trigger does, from the loosest to the strictest (a repo file may only move right).
ON_TRIGGER = ("log", "escalate", "deny")

CORE_USER_SCHEMA: Schema = {
    "floor": c.level,
    "profile": c.string,
    "trusted_remotes": c.STR_LIST,
    "identities": c.STR_LIST,
    "env": {"pass": c.ENV_PATTERNS, "drop": c.ENV_LIST},
    "mounts": {"ro": c.HOST_PATHS, "rw": c.HOST_PATHS, "drop": c.HOST_PATHS},
    "deny": {"paths": c.REPO_PATHS},
    "network": {"block": c.CIDR_LIST, "mode": c.NETWORK_MODE, "allow": c.ALLOW_LIST},
    "escalation": {"on_trigger": c.one_of(*ON_TRIGGER)},
    "triggers": {"trusted_hosts": c.STR_LIST},
    "sessions": {"retention_days": c.whole(1, 3650)},
    "credentials": CREDENTIALS,  # [credentials.NAME]: where the user keeps an agent credential (config/credentials.py)
}

# What a repo file may say; everything here only tightens.
CORE_REPO_SCHEMA: Schema = {
    "floor": c.level,
    "intent": {"push": c.boolean, "untrusted_input": c.boolean},
    "env": {"drop": c.ENV_LIST},
    "mounts": {"drop": c.HOST_PATHS},  # toolchain dirs kept out of the view
    "deny": {"paths": c.REPO_PATHS},
    "network": {"block": c.CIDR_LIST, "mode": c.NETWORK_MODE, "allow": c.ALLOW_LIST},  # mode and allow only tighten
    "escalation": {"on_trigger": c.one_of(*ON_TRIGGER)},
}

# Keys a repo file may not set because they loosen; recognised so they are reported, not guessed at.
REPO_IGNORED = {
    "profile": "the agent to run is the user's choice",
    "trusted_remotes": "trust can only come from the user's config or `posture trust`",
    "identities": "identities can only come from the user's config",
    "env.pass": "passing environment variables loosens; only the user's config may",
    "mounts.ro": "extra mounts loosen; only the user's config may",
    "mounts.rw": "extra mounts loosen; only the user's config may",
    "triggers": "trusting hosts loosens the live triggers; only the user's config may",
    "sessions": "how long posture keeps ended sessions is the user's choice",
    "credentials": "credentials and the hosts they are for come from the user's config only",
}
BACKEND_TABLE_IGNORED = "backend settings come from the user's config only"


@dataclass(frozen=True)
class Extensions:
    """What plugins add to the config: each backend's own table (`[l3]`, ...) and every rule's name
    (remappable in `[rules]`). Built by the plugin manager and passed in; config never loads plugins."""

    tables: dict[str, Schema] = field(default_factory=dict)
    rule_names: tuple[str, ...] = RULE_NAMES_BUILTIN


def schemas(ext: Extensions) -> tuple[Schema, Schema, dict[str, str]]:
    """The user schema, the repo schema and the repo file's ignored keys, for these extensions."""
    rules = {name: c.level for name in dict.fromkeys((*RULE_NAMES_BUILTIN, *ext.rule_names))}
    user = {**CORE_USER_SCHEMA, "rules": rules, **ext.tables}
    repo = {**CORE_REPO_SCHEMA, "rules": dict(rules)}
    ignored = {**REPO_IGNORED, **{name: BACKEND_TABLE_IGNORED for name in ext.tables}}
    return user, repo, ignored


def validate(
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
            raise ConfigError(path, line_of(text, dotted), dotted, f"unknown key (expected one of: {known})")
        if isinstance(spec, c.Named):
            clean[key] = _validate_named(value, spec, path, text, dotted)
            continue
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(path, line_of(text, dotted), dotted, f"expected a table [{dotted}], got {value!r}")
            sub, sub_skipped = validate(value, spec, path, text, ignored, prefix=f"{dotted}.")
            clean[key] = sub
            skipped.extend(sub_skipped)
            continue
        try:
            clean[key] = spec(value)
        except ValueError as exc:
            raise ConfigError(path, line_of(text, dotted), dotted, str(exc)) from None
    return clean, skipped


def _validate_named(value: Any, spec: c.Named, path: Path, text: str, dotted: str) -> dict[str, Any]:
    """Check a table of named sub-tables (`[credentials.NAME]`): each against the schema, then whole."""
    if not isinstance(value, dict):
        raise ConfigError(path, line_of(text, dotted), dotted, f"expected tables [{dotted}.NAME], got {value!r}")
    out: dict[str, Any] = {}
    for name, entry in value.items():
        where = f"{dotted}.{name}"
        if not isinstance(entry, dict) or not c.Named.NAME.match(name):
            raise ConfigError(path, line_of(text, where), where, f"expected a table [{dotted}.NAME] (NAME: letters, digits, - and _), got {entry!r}")
        sub, _ = validate(entry, spec.schema, path, text, prefix=f"{where}.")
        if spec.whole is not None:
            try:
                sub = spec.whole(sub)
            except c.KeyedError as exc:
                key = f"{where}.{exc.key}" if exc.key else where
                raise ConfigError(path, line_of(text, key) or line_of(text, where), key, str(exc)) from None
        out[name] = sub
    return out


def load_user_config(ext: Extensions, path: Path | None = None) -> dict[str, Any]:
    """Load and validate the user's config; a missing file is an empty config."""
    path = path or paths.user_config_file()
    if not path.exists():
        return {}
    data, text = read_toml(path)
    clean, _ = validate(data, schemas(ext)[0], path, text)
    return clean


def load_repo_config(project: Path, ext: Extensions) -> tuple[dict[str, Any], list[tuple[str, str]], Path | None]:
    """Load the project's `.posture.toml`: (tightening values, [(ignored key, why)], path or None)."""
    path = project / REPO_FILE
    if not path.is_file():
        return {}, [], None
    data, text = read_toml(path)
    _, repo_schema, ignored = schemas(ext)
    clean, skipped = validate(data, repo_schema, path, text, ignored=ignored)
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
    mounts_drop: list[str] = field(default_factory=list)  # toolchain dirs kept out of the view (user and repo)
    deny_paths: list[str] = field(default_factory=list)
    network_block: list[str] = field(default_factory=list)
    network_mode: str = "public"  # the effective mode without a --network flag (user's config, tightened by the repo's)
    user_network_mode: str = "public"
    repo_network_mode: str | None = None  # what the repo file asked (applies under any --network only where stricter)
    network_allow: list[str] = field(default_factory=list)  # the user's allowlist, shrunk by the repo's
    on_trigger: str = "deny"  # what a live trigger does: escalate, deny or log
    trusted_hosts: list[str] = field(default_factory=list)  # globs: WebFetch of these fires no trigger
    intent_push: bool = False
    intent_untrusted_input: bool = False
    backend: dict[str, dict[str, Any]] = field(default_factory=dict)  # each backend's own table, by name
    retention_days: int = RETENTION_DAYS  # ended sessions older than this are pruned (`posture gc`)
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)  # [credentials.NAME] of the user's config only
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


def merge(user: dict[str, Any], repo: dict[str, Any], repo_ignored: list[tuple[str, str]], repo_path: Path | None,
          tables: tuple[str, ...] = ()) -> Settings:
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
    s.mounts_drop = list(user.get("mounts", {}).get("drop", []))
    s.deny_paths = list(user.get("deny", {}).get("paths", []))
    s.network_block = list(user.get("network", {}).get("block", []))
    s.network_mode = s.user_network_mode = user.get("network", {}).get("mode", "public")
    s.network_allow = list(user.get("network", {}).get("allow", []))
    s.on_trigger = user.get("escalation", {}).get("on_trigger", "deny")
    s.trusted_hosts = list(user.get("triggers", {}).get("trusted_hosts", []))
    s.backend = {name: dict(user.get(name, {})) for name in tables}
    s.retention_days = user.get("sessions", {}).get("retention_days", RETENTION_DAYS)
    s.credentials = dict(user.get("credentials", {}))
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
    repo_on = repo.get("escalation", {}).get("on_trigger")
    if repo_on and ON_TRIGGER.index(repo_on) > ON_TRIGGER.index(s.on_trigger):
        s.on_trigger = repo_on
        asked.append(f"escalation.on_trigger = {repo_on}")
    elif repo_on and repo_on != s.on_trigger:
        s.repo_ignored.append(("escalation.on_trigger", f"{repo_on} is looser than the user's {s.on_trigger}; a repo may only move toward deny"))
    mounts_drop = repo.get("mounts", {}).get("drop", [])
    if mounts_drop:
        s.mounts_drop = _union(s.mounts_drop, mounts_drop)
        asked.append(f"mounts.drop = {mounts_drop}")
    block = repo.get("network", {}).get("block", [])
    if block:
        s.network_block = _union(s.network_block, block)
        asked.append(f"network.block = {block}")
    _merge_network(s, repo.get("network", {}))
    return s


def _merge_network(s: Settings, repo: dict[str, Any]) -> None:
    """A repo's `[network] mode` applies only toward `none`; its `allow` only shrinks the user's list."""
    from ..gateway.allowlist import intersect, stricter

    mode = repo.get("mode")
    if mode is not None:
        s.repo_network_mode = mode
        if stricter(mode, s.network_mode) == mode and mode != s.network_mode:
            s.network_mode = mode
            s.repo_asked.append(f"network.mode = {mode}")
        elif mode != s.network_mode:
            s.repo_ignored.append(("network.mode", f"{mode} is looser than the user's {s.network_mode}; a repo may only move toward none"))
    if "allow" in repo:
        kept, ignored = intersect(s.network_allow, repo["allow"])
        if ignored:
            s.repo_ignored.append(("network.allow", f"{', '.join(ignored)} not in the user's [network] allow; a repo may only shrink it"))
        if kept != s.network_allow:
            s.network_allow = kept
            s.repo_asked.append(f"network.allow = {kept} (the user's list, shrunk)")


def load_settings(project: Path, ext: Extensions, user_config: Path | None = None) -> Settings:
    """Load both files for `project` and merge them (`ext`: what the plugins declare; see
    plugins.load_settings, which is what commands call)."""
    user = load_user_config(ext, user_config)
    repo, ignored, repo_path = load_repo_config(project, ext)
    return merge(user, repo, ignored, repo_path, tuple(ext.tables))
