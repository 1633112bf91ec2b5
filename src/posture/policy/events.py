"""What the rules judge while a session runs, and what posture answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TOOL_CALL = "tool_call"  # reported by the agent's hook, before the tool runs
PROJECT_CHANGED = "project_changed"  # seen by the host-side watcher

ALLOW, DENY = "allow", "deny"
ON_TRIGGER = ("escalate", "deny", "log")


@dataclass(frozen=True)
class Event:
    """One thing that happened in a session: a tool call the agent is about to make, or a change to
    the project seen from the host (`detail` says what changed)."""

    kind: str
    tool_name: str = ""
    tool_input: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def describe(self) -> str:
        """One line for logs: the tool and its main argument, or what changed."""
        if self.kind == PROJECT_CHANGED:
            return self.detail
        main = next((str(self.tool_input[k]) for k in ("url", "command", "query", "file_path") if k in self.tool_input), "")
        return f"{self.tool_name} {main[:200]}".strip()


@dataclass(frozen=True)
class Fired:
    """A rule that fired on an event: its name, the level it asks for, and why."""

    rule: str
    level: str
    evidence: str


@dataclass(frozen=True)
class Verdict:
    """posture's answer to a reported event."""

    decision: str  # allow | deny
    reason: str = ""  # for deny: what the model is told
