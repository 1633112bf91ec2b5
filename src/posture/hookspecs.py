"""Plugin hook specifications: one small hook per extension point."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("posture")
hookimpl = pluggy.HookimplMarker("posture")


@hookspec
def posture_backends() -> list:
    """Return Backend instances (posture.session.Backend) this plugin provides."""


@hookspec
def posture_rules() -> list:
    """Return trigger rules (posture.policy.rules.Rule) this plugin provides."""


@hookspec
def posture_commands(app) -> None:
    """Add commands to the typer `app` (e.g. a backend's `netd` or `l4 enroll`)."""
