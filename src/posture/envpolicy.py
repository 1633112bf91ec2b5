"""Build a sandbox's environment from an allowlist; nothing else of the host's passes.

A name passes when the profile or the user's `[env] pass` allows it. Secret-looking
names (TOKEN, KEY, SECRET, PASSWORD, CREDENTIAL, AWS_*, TS_AUTHKEY, ...) pass only when
named one by one, never through a `NAME_*` pattern. Host session plumbing
(SSH_AUTH_SOCK, D-Bus, X11, Wayland, XDG_RUNTIME_DIR) never passes at all.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

NEVER_PASS = frozenset(
    {
        "SSH_AUTH_SOCK",
        "SSH_AGENT_PID",
        "GPG_AGENT_INFO",
        "DBUS_SESSION_BUS_ADDRESS",
        "DBUS_SYSTEM_BUS_ADDRESS",
        "DISPLAY",
        "XAUTHORITY",
        "WAYLAND_DISPLAY",
        "XDG_RUNTIME_DIR",
        "KRB5CCNAME",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PYTHONSTARTUP",
        "BASH_ENV",
        "ENV",
        "PROMPT_COMMAND",
    }
)
SECRET_LOOKING = re.compile(
    r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|COOKIE|SESSION_ID|PRIVATE|AUTH)"
    r"|^AWS_|^AZURE_|^GOOGLE_APPLICATION|^GCP_|^TS_AUTHKEY$|^VAULT_|^NPM_CONFIG__AUTH|^PGPASS",
    re.IGNORECASE,
)
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def inside_path(entries: list[str]) -> str:
    """The sandbox's PATH: the user's PATH entries that are in the view, in the user's order
    (toolchains.py decides them); the system PATH when none is."""
    return ":".join(entries) if entries else SANDBOX_PATH


def secret_looking(name: str) -> bool:
    """True when `name` looks like it holds a credential."""
    return bool(SECRET_LOOKING.search(name))


@dataclass
class EnvDecision:
    """The environment handed to the sandbox, and what happened to every host variable."""

    env: dict[str, str] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # name -> why

    def masked(self) -> dict[str, str]:
        """The passed variables with secret-looking values masked, for display."""
        return {k: ("****" if secret_looking(k) else v) for k, v in sorted(self.env.items()) if k in self.passed}


def _allowed_by(name: str, patterns: list[str]) -> str | None:
    """The pattern that allows `name`: an exact name, or a NAME_* prefix pattern."""
    for pattern in patterns:
        if pattern == name:
            return "exact"
    for pattern in patterns:
        if "*" in pattern and fnmatch.fnmatchcase(name, pattern):
            return "pattern"
    return None


def build_env(
    host_env: dict[str, str],
    allow: list[str],
    drop: list[str],
    fixed: dict[str, str],
) -> EnvDecision:
    """Return the sandbox environment: `fixed` values plus allowed host variables, minus `drop`."""
    decision = EnvDecision()
    for name, value in sorted(host_env.items()):
        if name in fixed:
            continue
        how = _allowed_by(name, allow)
        if how is None:
            continue
        if name in NEVER_PASS:
            decision.refused[name] = "host session plumbing never passes"
        elif name in drop:
            decision.refused[name] = "dropped by [env] drop"
        elif secret_looking(name) and how != "exact":
            decision.refused[name] = "secret-looking: name it one by one in [env] pass to let it through"
        else:
            decision.env[name] = value
            decision.passed.append(name)
    decision.env.update(fixed)
    return decision
