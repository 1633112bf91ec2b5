"""The agent's terminal: one tmux server per session, built here and nowhere else.

The agent runs in a tmux session so that the user can detach and come back (`posture attach`).
Local levels have a session to themselves, so one server name serves; a shared remote host
names a server per session.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SERVER = "posture"
WINDOW = "agent"
SIZE = ("200", "50")


@dataclass(frozen=True)
class AgentTerminal:
    """The tmux command lines for one session's agent terminal."""

    server: str = DEFAULT_SERVER

    def _tmux(self, *args: str) -> list[str]:
        return ["tmux", "-L", self.server, *args]

    def new(self, argv: list[str]) -> list[str]:
        """Start `argv` detached in the agent window."""
        return self._tmux("new-session", "-d", "-s", WINDOW, "-x", SIZE[0], "-y", SIZE[1], "--", *argv)

    def has(self) -> list[str]:
        """Exit 0 while the agent window exists."""
        return self._tmux("has-session", "-t", WINDOW)

    def attach(self) -> list[str]:
        """Attach the caller's terminal to the agent window."""
        return self._tmux("attach-session", "-t", WINDOW)

    def kill(self) -> list[str]:
        """Stop the server and everything in it."""
        return self._tmux("kill-server")
