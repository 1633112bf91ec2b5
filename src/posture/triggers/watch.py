"""The project, watched from the host while a session runs (every level).

Cheap to run once a second: it compares the size and modification time of the files that
decide two rules (the project's MCP configs, the session's own agent config where the agent
adds servers, the git config that holds the remotes), and only when one changed does it
gather the facts again and re-run `unfamiliar_mcp` and `untrusted_repo`. A rule that fires
with new evidence is a trigger; when the cause goes away, a deny-latch is cleared.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .. import gitutil, plugins
from ..policy import facts as factsmod
from ..policy import mcp
from ..policy.events import Fired
from .monitor import Monitor

WATCHED_RULES = ("unfamiliar_mcp", "untrusted_repo")
INTERVAL = 1.0
UNREADABLE_SETTLE_LOOKS, UNREADABLE_SETTLE_SECONDS = 4, 0.25


def watched_files(project: Path, agent_home: Path | None) -> list[Path]:
    """The files whose change can make a watched rule fire."""
    files = [project / rel for rel in mcp.PROJECT_FILES]
    if agent_home is not None:
        files += [agent_home / ".claude.json", agent_home / ".codex" / "config.toml"]
    common = gitutil.common_dir(project)
    if common is not None:
        files.append(common / "config")
    return files


def signature(files: list[Path]) -> tuple[tuple[int, int] | None, ...]:
    """Size and mtime of each file (None for a missing one)."""
    out: list[tuple[int, int] | None] = []
    for path in files:
        try:
            st = os.stat(path)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class Watcher:
    """Polls the project of one session and reports triggers to its monitor."""

    def __init__(self, monitor: Monitor, agent_home: Path | None, interval: float = INTERVAL) -> None:
        self.monitor, self.agent_home, self.interval = monitor, agent_home, interval
        self.files = watched_files(monitor.project, agent_home)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="posture-watch", daemon=True)
        self._seen: dict[str, str] = {}
        self._sig: tuple[tuple[int, int] | None, ...] = ()

    def start(self) -> None:
        """Start polling; the thread first takes the baseline (what fires now is what the session
        started with), off the path that starts the session."""
        self._thread.start()

    def baseline(self) -> None:
        """What fires now counts as what the session started with."""
        self._sig = signature(self.files)
        self._seen = {f.rule: f.evidence for f in self.evaluate()}

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()

    def evaluate(self) -> list[Fired]:
        """The watched rules that fire on the project as it is now."""
        return self._look()[0]

    def _look(self) -> tuple[list[Fired], bool]:
        """What `evaluate` returns, and whether any MCP config could not be read."""
        project, settings = self.monitor.project, self.monitor.settings
        facts = factsmod.gather(project)
        if self.agent_home is not None:  # the session's own agent config, where `claude mcp add` writes
            own = mcp.discover(project, home=self.agent_home)
            known = {s.key for s in facts.mcp.servers}
            facts.mcp.servers += [s for s in own.servers if s.key not in known]
            facts.mcp.unreadable += [u for u in own.unreadable if u not in facts.mcp.unreadable]
        out = []
        for rule in plugins.rules():
            if rule.name in WATCHED_RULES:
                finding = rule.evaluate(facts, settings)
                if finding.fired:
                    out.append(Fired(rule.name, settings.rule_level(rule.name, rule.default_level), finding.evidence))
        return out, bool(facts.mcp.unreadable)

    def poll_once(self) -> None:
        """One look: report rules that fire with new evidence; clear a latch whose cause went away."""
        sig = signature(self.files)
        if sig == self._sig:
            return
        changed = [str(f) for f, a, b in zip(self.files, sig, self._sig) if a != b]
        self._sig = sig
        fired, unreadable = self._look()
        for _ in range(UNREADABLE_SETTLE_LOOKS):  # a config caught mid-write (the agent truncates, then writes)
            if not unreadable:                    # is looked at again; one that stays unreadable fires
                break
            time.sleep(UNREADABLE_SETTLE_SECONDS)
            self._sig = signature(self.files)
            fired, unreadable = self._look()
        new = [f for f in fired if self._seen.get(f.rule) != f.evidence]
        self._seen = {f.rule: f.evidence for f in fired}
        detail = "changed: " + (", ".join(changed) or "the project's MCP configs or remotes")
        if new:
            self.monitor.project_changed(new, detail)
        elif not fired:
            self.monitor.cleared(detail)

    def _run(self) -> None:
        try:
            self.baseline()
        except Exception:  # noqa: BLE001 - without a baseline, the first look reports what fires
            self._sig = ()
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a failed look is retried at the next one
                from .record import append

                append(self.monitor.record_.id, self.monitor.level, "watch", "the project", "allowed", f"the watcher failed: {exc}", outcome="error")
