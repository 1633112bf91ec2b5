"""The one session interface every backend implements, and the session store.

Sessions live in posture's state dir (`sessions/<id>.json`), never inside any sandbox's view.
"""

from __future__ import annotations

import abc
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import paths, terminal
from .errors import InternalError, Refused, UsageError

# Session statuses.
STARTING, RUNNING, FROZEN, STOPPED, FAILED, ESCALATED, DEAD = (
    "starting", "running", "frozen", "stopped", "failed", "escalated", "dead",
)
LIVE = (STARTING, RUNNING, FROZEN)


@dataclass
class SessionRecord:
    """What posture remembers about a session."""

    id: str
    project: str
    level: str
    backend: str
    profile: str
    status: str = STARTING
    parent: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    keeper_pid: int | None = None  # the host process that holds the session open, if any
    checkpoints: list[str] = field(default_factory=list)
    note: str = ""  # what happened and how to resume, for `status`
    start_from: str | None = None  # the checkpoint ref the session starts from (an escalation's)
    launch: list[str] | None = None  # the agent command its start launches (an escalation's resume)
    agent_argv: list[str] | None = None  # the agent command that runs in it
    network: str | None = None  # --network, the user's own choice of mode for this session (None: the config's)
    on_trigger: str | None = None  # what a live trigger does in this session (--on-trigger), else the config's
    data: dict[str, Any] = field(default_factory=dict)  # the escalation's progress, and the backend's own facts

    def public(self) -> dict[str, Any]:
        """The stable `status --json` shape."""
        return {
            "id": self.id,
            "project": self.project,
            "level": self.level,
            "backend": self.backend,
            "status": self.status,
            "parent": self.parent,
            "created": self.created,
            "profile": self.profile,
            "checkpoints": list(self.checkpoints),
            "note": self.note,
        }


def new_id() -> str:
    """A short, unguessable session id."""
    return time.strftime("%m%d") + "-" + os.urandom(4).hex()  # what secrets.token_hex(4) does, without importing it


def sessions_dir() -> Path:
    """Where session records are kept."""
    return paths.ensure_private_dir(paths.state_dir() / "sessions")


def session_runtime_dir(session_id: str) -> Path:
    """Private per-session directory on the host for sockets and scratch state.

    Under $XDG_RUNTIME_DIR (else /tmp/posture-<uid>, checked to be the user's own, 0700,
    not a symlink): unix socket paths must stay short, whatever the home directory is.
    """
    return paths.ensure_private_dir(paths.runtime_dir() / session_id)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_suffix(".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class SessionStore:
    """JSON records, one file per session, written atomically."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or sessions_dir()

    def _path(self, session_id: str) -> Path:
        if not session_id or "/" in session_id or session_id.startswith("."):
            raise UsageError(f"invalid session id {session_id!r}", fix="see `posture status` for session ids")
        return self.root / f"{session_id}.json"

    def save(self, record: SessionRecord) -> None:
        """Write `record` atomically."""
        path = self._path(record.id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
        os.replace(tmp, path)

    def get(self, session_id: str) -> SessionRecord:
        """The record of `session_id`; exit 64 when there is none."""
        path = self._path(session_id)
        if not path.exists():
            raise UsageError(f"no session {session_id!r}", fix="see `posture status` for session ids")
        return SessionRecord(**json.loads(path.read_text()))

    def update(self, session_id: str, **changes: Any) -> SessionRecord:
        """Change fields of a record under a lock and return it."""
        path = self._path(session_id)
        with _locked(path):
            record = self.get(session_id)
            for key, value in changes.items():
                setattr(record, key, value)
            self.save(record)
        return record

    def all(self) -> list[SessionRecord]:
        """Every record, oldest first; records of dead keepers are marked dead."""
        records = []
        for path in sorted(self.root.glob("*.json")):
            try:
                records.append(SessionRecord(**json.loads(path.read_text())))
            except (ValueError, TypeError):
                continue
        return sorted(records, key=lambda r: r.created)

    def live(self, project: str | None = None) -> list[SessionRecord]:
        """Sessions still starting, running or frozen (optionally of one project)."""
        return [r for r in self.all() if r.status in LIVE and (project is None or r.project == project)]

    def remove(self, session_id: str) -> None:
        """Forget a session."""
        self._path(session_id).unlink(missing_ok=True)
        self._path(session_id).with_suffix(".lock").unlink(missing_ok=True)


def release_placeholders(registry: str, session_id: str) -> None:
    """Drop `session_id`'s hold on its protected-path placeholders; remove those no live session holds."""
    from . import placeholders

    def live() -> set[str]:
        return {r.id for r in SessionStore().live(None) if r.id != session_id}

    placeholders.release(registry, session_id, live)


def pid_alive(pid: int | None) -> bool:
    """True when process `pid` exists (and is not a zombie)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class StartSpec:
    """What a backend needs to start a session: the view (None when the level needs none, as L4's
    record-only re-open), the checkpoint to start from (None: the project as it is now), and the
    agent command to launch in the agent terminal once the session is up (None: nothing yet)."""

    view: Any = None
    checkpoint: str | None = None
    launch: list[str] | None = None


@dataclass
class PullResult:
    """What `posture pull` brought back. `here` is True for a local level: its work is already in
    the project, and nothing was fetched."""

    session: str
    ref: str = ""  # refs/posture/<session>/pull-N
    commit: str = ""
    base: str = ""  # the checkpoint commit the session started from
    stat: str = ""  # `git diff --stat base commit`
    new: bool = False  # False when the host had nothing newer than the last pull
    here: bool = False


class Session(abc.ABC):
    """A running (or startable) agent environment at one level: the one interface the core calls."""

    def __init__(self, record: SessionRecord) -> None:
        self.record = record

    @property
    def terminal(self) -> terminal.AgentTerminal:
        """The agent's terminal (tmux) inside this session."""
        return terminal.AgentTerminal(terminal.DEFAULT_SERVER)

    @abc.abstractmethod
    def start(self, spec: StartSpec) -> None:
        """Bring the environment up from `spec`; return when commands can run in it."""

    @abc.abstractmethod
    def exec(self, argv: list[str], tty: bool) -> int:
        """Run `argv` inside, with this process's stdio; return its exit code (128+N if killed by N)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Tear everything down; no process of the session survives."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """True while the environment still runs (asked by the keeper)."""

    def launch(self, argv: list[str]) -> None:
        """Start the agent command in the session's agent terminal."""
        code = self.exec(self.terminal.new(argv), tty=False)
        if code != 0:
            raise InternalError(f"could not start the agent in session {self.record.id} (tmux exited {code})")

    def agent_running(self) -> bool:
        """True while the agent's terminal exists inside the session."""
        with open(os.devnull, "wb") as null:
            saved = os.dup(1), os.dup(2)
            try:
                os.dup2(null.fileno(), 1)
                os.dup2(null.fileno(), 2)
                return self.exec(self.terminal.has(), tty=False) == 0
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])

    def attach(self) -> int:
        """Connect the terminal to the session's agent; return when the user detaches or it ends."""
        return self.exec(self.terminal.attach(), tty=True)

    def checkpoint(self) -> str:
        """Capture the session's work as a commit under refs/posture/<session>/; return the ref."""
        from . import checkpoint

        return checkpoint.capture(Path(self.record.project), self.record.id).ref

    def freeze(self) -> None:
        """Stop the agent from acting (for a move up the ladder)."""
        raise Refused(f"session {self.record.id} ({self.record.backend}) cannot be frozen", fix="`posture down` it instead")

    def thaw(self) -> None:
        """Undo `freeze`."""
        raise Refused(f"session {self.record.id} ({self.record.backend}) cannot be thawed", fix="`posture down` it instead")

    def pull(self) -> PullResult:
        """Bring the session's work back for review; a local level answers that it is already here."""
        return PullResult(session=self.record.id, here=True)

    def close(self) -> None:  # noqa: B027 - most sessions hold no connection: nothing to close
        """Drop connections this process holds to the session (the session itself keeps running)."""

    def describe(self) -> dict[str, Any]:
        """Facts about the session for `status`."""
        return self.record.public()


@dataclass
class Check:
    """One line of `posture doctor`."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Availability:
    """Whether a backend can run here, and if not, why and how to fix it."""

    ok: bool
    reason: str = ""
    fix: str = ""


class Backend(abc.ABC):
    """A way of realising one level. Registered through the `posture` plugin entry points."""

    name: str = ""
    level: str = ""
    description: str = ""

    @abc.abstractmethod
    def availability(self, settings: Any) -> Availability:
        """Can this host run sessions at this level now? Fast; no side effects."""

    def doctor(self, settings: Any) -> list[Check]:
        """Detailed checks for `posture doctor`, each failing one with its fix."""
        avail = self.availability(settings)
        return [Check(self.name, avail.ok, avail.reason or "available", avail.fix)]

    def setup(self, settings: Any, options: dict[str, Any]) -> list[str]:
        """Root, once per host: install what this level needs; return what was done."""
        return []

    def teardown(self, settings: Any, purge: bool = False) -> list[str]:
        """Undo `setup`; fetched assets (a kernel) stay unless `purge`; return what was done."""
        return []

    # True when a session's work lives elsewhere and comes back only with `pull` (L4).
    remote_work: bool = False

    @abc.abstractmethod
    def session(self, record: SessionRecord, settings: Any) -> Session:
        """A Session for `record` (new, or re-opened from the store by a later command)."""
