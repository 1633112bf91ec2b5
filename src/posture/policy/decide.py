"""Turn facts and rules into a level: max(floor, ratchet, every fired rule), and the backend for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import levels, plugins
from ..config import Settings
from . import trust
from .facts import Facts, gather


@dataclass
class RuleResult:
    """One rule's verdict, as `explain` shows it."""

    rule: str
    fired: bool
    level: str
    evidence: str
    summary: str = ""


@dataclass
class Decision:
    """The level a project's session runs at, and every reason for it."""

    project: str
    floor: str
    floor_from: str
    level: str
    rules: list[RuleResult] = field(default_factory=list)
    ratchet: dict[str, Any] | None = None
    requested: str | None = None  # an explicit --level from the user
    override: str = ""  # set when an explicit --level goes below what the rules give
    backend: str | None = None
    backend_available: bool = False
    backend_reason: str = ""
    backend_fix: str = ""
    repo_file: str | None = None
    repo_asked: list[str] = field(default_factory=list)
    repo_ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ruled_level(self) -> str:
        """The level the floor, the ratchet and the rules give, before any explicit --level."""
        fired = [r.level for r in self.rules if r.fired]
        ratchet = [self.ratchet["level"]] if self.ratchet else []
        return levels.highest(self.floor, *ratchet, *fired)

    def why(self) -> str:
        """One line: the level and the reason for it."""
        if self.requested:
            note = f" (overriding {self.ruled_level} from the rules)" if self.override else ""
            return f"{self.level}: requested with --level{note}"
        fired = [r for r in self.rules if r.fired and r.level == self.level]
        if fired:
            return f"{self.level}: " + "; ".join(f"{r.rule}: {r.evidence}" for r in fired)
        if self.ratchet and self.ratchet["level"] == self.level and self.floor != self.level:
            return f"{self.level}: ratcheted after session {self.ratchet.get('session')} was escalated (clear with `posture trust`)"
        return f"{self.level}: the floor ({self.floor_from}); no rule fired"

    def to_json(self) -> dict[str, Any]:
        """The documented `explain --json` shape."""
        return {
            "project": self.project,
            "level": self.level,
            "floor": self.floor,
            "floor_from": self.floor_from,
            "ratchet": self.ratchet,
            "requested": self.requested,
            "rules": [
                {"rule": r.rule, "fired": r.fired, "level": r.level, "evidence": r.evidence} for r in self.rules
            ],
            "backend": self.backend,
            "backend_available": self.backend_available,
            "backend_reason": self.backend_reason,
            "repo_config": {
                "file": self.repo_file,
                "applied": list(self.repo_asked),
                "ignored": [{"key": k, "why": w} for k, w in self.repo_ignored],
            },
            "why": self.why(),
        }


def choose_backend(level: str, settings: Settings) -> tuple[str | None, bool, str, str]:
    """(name, available, reason, fix) of the first backend for `level` that can run here."""
    candidates = plugins.backends_for(level)
    if not candidates:
        return None, False, f"no backend for {level} is installed", "install posture with its backends (pip install 'posture[all]')"
    first: tuple[str | None, bool, str, str] | None = None
    for backend in candidates:
        avail = backend.availability(settings)
        if avail.ok:
            return backend.name, True, "", ""
        first = first or (backend.name, False, avail.reason, avail.fix)
    assert first is not None
    return first


def evaluate(facts: Facts, settings: Settings) -> list[RuleResult]:
    """Run every registered rule on the facts."""
    results = []
    for rule in plugins.rules():
        finding = rule.evaluate(facts, settings)
        level = settings.rule_level(rule.name, rule.default_level)
        results.append(RuleResult(rule.name, finding.fired, level, finding.evidence, rule.summary))
    return results


def decide(
    project: Path,
    settings: Settings,
    *,
    intent_push: bool = False,
    untrusted_input: bool = False,
    requested: str | None = None,
    check_backend: bool = True,
) -> Decision:
    """Decide the level for a session of `project`."""
    facts = gather(
        project,
        intent_push=intent_push or settings.intent_push,
        untrusted_input=untrusted_input or settings.intent_untrusted_input,
    )
    floor_from = f"floor = {settings.floor}"
    if any(a.startswith("floor") for a in settings.repo_asked):
        floor_from += " (raised by .posture.toml)"
    decision = Decision(
        project=str(project),
        floor=settings.floor,
        floor_from=floor_from,
        level=settings.floor,
        rules=evaluate(facts, settings),
        ratchet=trust.ratchet(project),
        requested=requested,
        repo_file=settings.repo_file,
        repo_asked=list(settings.repo_asked),
        repo_ignored=list(settings.repo_ignored),
    )
    decision.level = decision.ruled_level
    if requested:
        if levels.rank(requested) < levels.rank(decision.level):
            decision.override = f"--level {requested} below {decision.level} from the rules"
        decision.level = requested
    if check_backend:
        (decision.backend, decision.backend_available, decision.backend_reason, decision.backend_fix) = choose_backend(
            decision.level, settings
        )
    return decision
