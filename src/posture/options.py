"""The options of `posture exec` and `posture escalate`, declared once.

Both the fast path (entry.py, which parses these two commands without loading typer: about
45 ms saved on every `posture exec`) and the typer commands (cli/) are built from these
declarations; tests/core/test_cli.py checks that typer's commands carry exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEVEL_HELP = "auto (default: decided by the rules, see `posture explain`), l2, l3 or l4."


@dataclass(frozen=True)
class Option:
    """One `--flag`: its parameter name, default and help; `value` False for a flag without a value."""

    flag: str
    dest: str
    help: str
    default: Any = None
    value: bool = True


LEVEL = Option("--level", "level", LEVEL_HELP, "auto")
PROFILE = Option("--profile", "profile", "Agent profile: claude-code (default), codex, shell, or your own.")
INTENT = Option("--intent", "intent", "Declare what the task will do: push.")
UNTRUSTED_INPUT = Option("--untrusted-input", "untrusted_input", "The task reads content from strangers.", False, value=False)
NETWORK = Option("--network", "network", "public (default: the config's [network] mode), allowlist or none; a repo file may only tighten it.")
SESSION_EXEC = Option("--session", "session", "Run in this running session instead of a new one.")
ON_TRIGGER = Option("--on-trigger", "on_trigger", "What a live trigger does in this session: escalate, deny or log (default: [escalation] on_trigger, else deny).")

EXEC = (LEVEL, PROFILE, INTENT, UNTRUSTED_INPUT, NETWORK, SESSION_EXEC, ON_TRIGGER)

SESSION_ESCALATE = Option("--session", "session", "Session id (default: the only running one).")
TO = Option("--to", "to", "l3 or l4 (default: what the rules now give, at least one rung up).")
REASON = Option("--reason", "reason", "Why, for the audit log.", "")

ESCALATE = (SESSION_ESCALATE, TO, REASON)


def parse(tokens: list[str], options: tuple[Option, ...], path: bool) -> dict[str, Any] | None:
    """Parse `--name value`, `--name=value`, flags and (when `path`) one positional PATH into a dict
    of every option's dest (defaults filled in); None when anything else appears."""
    from pathlib import Path

    by_flag = {o.flag: o for o in options}
    parsed: dict[str, Any] = {o.dest: o.default for o in options}
    if path:
        parsed["path"] = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        option = by_flag.get(name)
        if option is not None and option.value:
            if not eq:
                if i + 1 >= len(tokens):
                    return None
                value = tokens[i + 1]
                i += 1
            parsed[option.dest] = value
        elif option is not None and not eq:
            parsed[option.dest] = True
        elif token.startswith("-") or not path or parsed.get("path") is not None:
            return None
        else:
            parsed["path"] = Path(token)
        i += 1
    return parsed
