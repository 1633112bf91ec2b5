"""The rungs of the ladder posture runs, in order of isolation."""

from __future__ import annotations

LEVELS: tuple[str, ...] = ("l2", "l3", "l4")


def is_level(name: object) -> bool:
    """True when `name` is one of the levels posture runs."""
    return isinstance(name, str) and name in LEVELS


def rank(level: str) -> int:
    """Position of `level` on the ladder (higher is more isolated)."""
    return LEVELS.index(level)


def highest(*levels: str) -> str:
    """The most isolated of the given levels."""
    return max(levels, key=rank)


def above(level: str) -> list[str]:
    """Levels strictly above `level`, lowest first."""
    return list(LEVELS[rank(level) + 1 :])
