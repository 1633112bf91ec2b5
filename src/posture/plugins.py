"""The plugin manager. Built-in backends and rules load through the same `posture`
entry point group as third-party plugins (see pyproject.toml).

Entry points are read straight from the installed distributions' `entry_points.txt` on
sys.path, the files importlib.metadata reads for regular installs, because importing
importlib.metadata costs about 12 ms on every posture call (and `posture exec` is on the
agent's hot path). When that finds no `posture` group at all (an unusual install),
importlib.metadata is asked after all.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import pluggy

from . import config, hookspecs
from .config import Extensions, Settings
from .errors import UsageError

GROUP = "posture"


def _distribution_name(info_dir: str) -> str:
    stem = info_dir.rsplit(".", 1)[0]
    return stem.split("-", 1)[0].lower().replace("_", "-")


def _group_in(text: str, group: str) -> list[tuple[str, str]]:
    """The (name, "module:attr") pairs of `[group]` in an entry_points.txt."""
    found, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == group
            continue
        if inside and "=" in line:
            name, _, value = line.partition("=")
            found.append((name.strip(), value.strip()))
    return found


def entry_points(group: str = GROUP) -> list[tuple[str, str]]:
    """Every (name, value) entry point of `group`, first distribution on sys.path wins."""
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for base in sys.path:
        try:
            names = os.listdir(base or ".")
        except OSError:
            continue
        for entry in sorted(names):
            if not entry.endswith((".dist-info", ".egg-info")):
                continue
            dist = _distribution_name(entry)
            if dist in seen:
                continue
            seen.add(dist)
            try:
                text = (Path(base or ".") / entry / "entry_points.txt").read_text()
            except OSError:
                continue
            found.extend(_group_in(text, group))
    return found


def _load(value: str) -> object:
    module, _, attr = value.partition(":")
    obj: object = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


@functools.lru_cache(maxsize=1)
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every `posture` entry point loaded."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    points = entry_points()
    if points:
        for name, value in points:
            if pm.get_plugin(name) is None and not pm.is_blocked(name):
                pm.register(_load(value), name=name)
    else:
        pm.load_setuptools_entrypoints(GROUP)
    return pm


def config_extensions() -> Extensions:
    """What the loaded plugins add to the config: their tables and their rules' names."""
    pm = manager()
    tables: dict[str, config.Schema] = {}
    for batch in pm.hook.posture_config_tables():
        for name, schema in (batch or {}).items():
            if name in config.CORE_USER_SCHEMA or name == "rules":
                raise UsageError(f"a plugin declares the config table [{name}], which is posture's own", fix="rename the plugin's table")
            tables.setdefault(name, schema)
    return Extensions(tables=tables, rule_names=tuple(r.name for r in rules_from(pm)))


def load_settings(project: Path, user_config: Path | None = None) -> Settings:
    """The effective settings for `project`, with every plugin's config tables and rule names."""
    return config.load_settings(project, config_extensions(), user_config)


def rules_from(pm: pluggy.PluginManager) -> list:
    """Every registered trigger rule, in registration order, names unique."""
    seen: dict[str, object] = {}
    for batch in pm.hook.posture_rules():
        for rule in batch or []:
            seen.setdefault(rule.name, rule)
    return list(seen.values())


def rules() -> list:
    """Every registered trigger rule."""
    return rules_from(manager())


def backends() -> list:
    """Every registered backend."""
    found: list[Any] = []
    for batch in manager().hook.posture_backends():
        found.extend(batch or [])
    return found


def backends_for(level: str) -> list:
    """Backends that realise `level`."""
    return [b for b in backends() if b.level == level]


def backend_named(name: str) -> Any:
    """The backend called `name`; exit 64 when none is registered."""
    for backend in backends():
        if backend.name == name:
            return backend
    raise UsageError(f"no backend named {name!r}", fix="see `posture doctor` for the installed backends")
