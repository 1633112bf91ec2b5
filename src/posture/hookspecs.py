"""Plugin hook specifications: one small hook per extension point.

Built-in backends and rules implement these exactly as a third-party plugin would
(see backends/*.py and policy/rules.py)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("posture")
hookimpl = pluggy.HookimplMarker("posture")


@hookspec
def posture_backends() -> list[Any]:  # type: ignore[empty-body]
    """Return Backend instances (posture.session.Backend) this plugin provides."""


@hookspec
def posture_rules() -> list[Any]:  # type: ignore[empty-body]
    """Return trigger rules (posture.policy.rules.Rule) this plugin provides; each rule's name
    becomes a key of `[rules]` in the config."""


@hookspec
def posture_config_tables() -> dict[str, Any]:  # type: ignore[empty-body]
    """Return the config tables this plugin owns: {"l3": {key: checker, ...}} (checkers from
    posture.config.checks). Only the user's config may set them; a repo file's are ignored."""


@hookspec
def posture_commands(app: Any) -> None:
    """Add commands to the typer `app` (e.g. a backend's `netd` or `l4 enroll`)."""
