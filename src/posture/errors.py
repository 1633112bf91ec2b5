"""Errors that carry their sysexits exit code and one clear line for the user."""

from __future__ import annotations

EX_USAGE = 64  # usage or configuration error
EX_UNAVAILABLE = 69  # a backend this level needs is unavailable
EX_SOFTWARE = 70  # internal error
EX_NOPERM = 77  # refused by policy


class PostureError(Exception):
    """Base error: `str(err)` is the one line shown to the user."""

    exit_code = EX_SOFTWARE

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        """The single line printed for this error: what, where, and the fix."""
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class UsageError(PostureError):
    """Bad command line or configuration (exit 64)."""

    exit_code = EX_USAGE


class ConfigError(UsageError):
    """A configuration file is wrong: `file:line: key: what (expected ...)`."""

    def __init__(self, path: object, line: int | None, key: str, problem: str) -> None:
        where = f"{path}:{line}" if line else f"{path}"
        self.path, self.lineno, self.key, self.problem = path, line, key, problem
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class Unavailable(PostureError):
    """A backend or facility the chosen level needs is not available here (exit 69)."""

    exit_code = EX_UNAVAILABLE


class Refused(PostureError):
    """Refused by policy (exit 77)."""

    exit_code = EX_NOPERM


class InternalError(PostureError):
    """Something posture itself got wrong (exit 70)."""

    exit_code = EX_SOFTWARE
