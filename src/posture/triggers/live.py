"""A session's live triggers, put together: the report channel, the monitor and the watcher, held
by the process that holds the session (its keeper, or `posture exec`)."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..profiles import Profile
from ..session import SessionRecord, session_runtime_dir
from ..view import View
from . import arm, record
from .channel import ReportServer
from .monitor import Monitor
from .watch import Watcher


class LiveTriggers:
    """Arm a view, then serve and watch while the session runs."""

    def __init__(self, rec: SessionRecord, settings: Settings, profile: Profile, kept: bool) -> None:
        self.record = rec
        self.profile = profile
        on_trigger = rec.on_trigger or settings.on_trigger
        self.monitor = Monitor(rec, settings, kept=kept, on_trigger=on_trigger)
        self.socket = session_runtime_dir(rec.id) / "report.sock"
        self.server = ReportServer(self.socket, self.monitor.judge, lambda why: record.refused_message(rec.id, rec.level, why))
        self.watcher: Watcher | None = None
        self.hooked = False

    def arm(self, view: View | None) -> None:
        """Open the report channel and give the view its door and the agent's hook."""
        self.server.start()
        if view is not None:
            self.hooked = arm.arm(view, self.profile, self.socket)

    def watch(self, agent_home: Path | None) -> None:
        """Start watching the project (after the session is up)."""
        self.watcher = Watcher(self.monitor, agent_home)
        self.watcher.start()

    def close(self) -> None:
        """Stop serving and watching."""
        if self.watcher is not None:
            self.watcher.close()
        self.server.close()
