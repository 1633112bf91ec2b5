"""The plugin manager. Built-in backends and rules load through the same `posture`
entry point group as third-party plugins (see pyproject.toml)."""

from __future__ import annotations

import functools
import importlib
import os

import pluggy

from . import config, hookspecs
from .errors import UsageError

# Used only when posture runs from a source tree that was never installed (no entry points).
_BUILTIN_MODULES = ("posture.policy.rules", "posture.backends.bwrap", "posture.backends.libvirt", "posture.backends.tailnet")


@functools.lru_cache(maxsize=1)
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every `posture` entry point loaded."""
    pm = pluggy.PluginManager("posture")
    pm.add_hookspecs(hookspecs)
    loaded = pm.load_setuptools_entrypoints("posture")
    if loaded == 0 and not os.environ.get("POSTURE_NO_BUILTINS"):
        for name in _BUILTIN_MODULES:
            pm.register(importlib.import_module(name), name=name)
    config.register_rule_names([r.name for r in rules_from(pm)])
    return pm


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
    found = []
    for batch in manager().hook.posture_backends():
        found.extend(batch or [])
    return found


def backends_for(level: str) -> list:
    """Backends that realise `level`."""
    return [b for b in backends() if b.level == level]


def backend_named(name: str):
    """The backend called `name`; exit 64 when none is registered."""
    for backend in backends():
        if backend.name == name:
            return backend
    raise UsageError(f"no backend named {name!r}", fix="see `posture doctor` for the installed backends")
