"""Arming a session's view for live triggers: the agent's managed settings with posture's hook,
and the report channel's socket.

For Claude Code, /etc/claude-code/managed-settings.json inside is posture's file, bound
read-only (managed settings outrank the user's and the project's, and settings files
cannot disable managed hooks). A managed settings file the host already has is kept: its
keys stay, posture's PreToolUse hook is added to its hooks. Variables that switch Claude
Code's hooks off (CLAUDE_CODE_SIMPLE, CLAUDE_CODE_SAFE_MODE) do not enter the session.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..profiles import Profile
from ..view import Bind, View
from .channel import REPORT_INSIDE

MANAGED_SETTINGS = "/etc/claude-code/managed-settings.json"
AGENT_DIR_INSIDE = "/run/posture/agent"  # where the exec agents' directory (guest/) is bound
HOOK_COMMAND = f"/usr/bin/python3 -I -S {AGENT_DIR_INSIDE}/hook.py"
HOOK_TIMEOUT_S = 120
HOOK_OFF_SWITCHES = ("CLAUDE_CODE_SIMPLE", "CLAUDE_CODE_SAFE_MODE")
HOOKED_PROFILES = {"claude-code": "Claude Code's PreToolUse hook in its managed settings"}


def hook_kind(profile: Profile) -> str | None:
    """How `profile`'s agent reports its tool calls, or None when it cannot (only the host watcher runs)."""
    return profile.live_hook if profile.live_hook in HOOKED_PROFILES else None


def managed_settings(host_file: Path = Path(MANAGED_SETTINGS)) -> str:
    """The managed settings inside: the host's own (if any, valid JSON) plus posture's PreToolUse hook."""
    base: dict[str, Any] = {}
    try:
        loaded = json.loads(host_file.read_text())
        if isinstance(loaded, dict):
            base = loaded
    except (OSError, ValueError):
        pass
    found = base.get("hooks")
    hooks: dict[str, Any] = found if isinstance(found, dict) else {}
    pre = [h for h in (hooks.get("PreToolUse") or []) if isinstance(h, dict)]
    pre.insert(0, {"matcher": "*", "hooks": [{"type": "command", "command": HOOK_COMMAND, "timeout": HOOK_TIMEOUT_S}]})
    base["hooks"] = {**hooks, "PreToolUse": pre}
    base.pop("disableAllHooks", None)
    return json.dumps(base, indent=2) + "\n"


HOOKED_LEVELS = ("l2",)  # where the report channel reaches inside (L3 and L4: the host-side watcher only, for now)


def arm(view: View, profile: Profile, report_socket: Path) -> bool:
    """Give `view` the report channel and, where the profile's agent has a hook, posture's managed
    settings; return whether tool calls will be reported."""
    if view.level not in HOOKED_LEVELS:
        return False
    view.binds.append(Bind(str(report_socket), REPORT_INSIDE, writable=False))
    if hook_kind(profile) is None:
        return False
    view.files[MANAGED_SETTINGS] = managed_settings()
    for name in HOOK_OFF_SWITCHES:
        view.env.env.pop(name, None)
    return True


def explain(profile: Profile, on_trigger: str, trusted_hosts: list[str]) -> dict[str, Any]:
    """What the live triggers of a session with `profile` would see and do (for `posture explain`)."""
    kind = hook_kind(profile)
    return {
        "on_trigger": on_trigger,
        "tool_calls": {"hook": kind, "how": HOOKED_PROFILES.get(kind or "", ""), "levels": list(HOOKED_LEVELS) if kind else []},
        "watched": ["the project's MCP configs", "the session's own agent config", "git remotes"],
        "trusted_hosts": list(trusted_hosts),
        "not_seen": ("tool calls at " + ", ".join(lvl for lvl in ("l3", "l4") if lvl not in HOOKED_LEVELS) + "; " if kind else "every tool call (this agent has no hook posture installs); ")
        + "network use inside a command (a curl in a script is not a tool call): the network modes and the egress log are the second line",
    }
