"""L2 backend: a bubblewrap sandbox per session, networked by the root helper `posture netd`.

The View becomes bwrap arguments (system paths read-only, generated /etc files, a tmpfs
home with the profile's binds, a private /tmp, the project read-write with its
protected paths read-only and denied paths hidden). bwrap gets exactly the view's
environment, its own user/pid/ipc/uts/cgroup/net namespaces, a new session, no
capabilities, no nested user namespaces and a seccomp filter (posture.seccomp).

Start-up order, so no command runs before the network policy holds:
  1. bwrap starts the exec agent on a listening socket the host bound and passed in
     (its path is not visible inside); --info-fd gives the sandbox's first pid at once;
  2. meanwhile netd (checked with SO_PEERCRED) verifies its nftables rule against its
     cgroup's id now, moves the sandbox's processes into a per-session cgroup (before
     the agent ever forks) and attaches slirp4netns from the filtered cgroup; any
     failure kills the sandbox and is exit 69;
  3. only then does posture connect to the agent: commands run through it
     (posture.channel), so nothing the agent runs predates the network policy.
Module import stays light: it runs on every CLI start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..session import Session, SessionRecord, StartSpec, release_placeholders
from .argv import hardening_args, read_int, view_args, which

AGENT_DIR_INSIDE = "/run/posture/agent"
PYTHON = "/usr/bin/python3"
INFO_TIMEOUT = 10.0
# The agent is imported rather than run as a script, so Python uses its compiled .pyc from the
# package (a script is compiled from source on every start: a few ms before the first command).
AGENT_MAIN = f"import sys; sys.path.insert(0, {AGENT_DIR_INSIDE!r}); import agent; sys.exit(agent.main())"


class _SetupRace(Exception):
    """bwrap died setting up a sandbox that never ran anything (worth one fresh try)."""


class BwrapSession(Session):
    """One bwrap sandbox, its network (via netd) and its exec agent."""

    def __init__(self, record: SessionRecord, settings: Any) -> None:
        super().__init__(record)
        self.view: Any = None
        self.settings = settings
        self.proc: Any = None
        self.door: Any = None  # posture.gateway.door.Door: the session's gateway, in the process that started it

    # -------------------------------------------------------------- helpers
    @property
    def data(self) -> dict[str, Any]:
        return self.record.data

    def _runtime(self) -> Path:
        from ..session import session_runtime_dir

        return session_runtime_dir(self.record.id)

    def _netd_socket(self) -> str:
        from ..netd import client as netd

        return self.data.get("netd_socket") or netd.socket_path(self.settings)

    def _box_dir(self) -> Path | None:
        from ..netd import cgroups

        rel = self.data.get("box")
        mount = cgroups.v2_mount()
        return mount / rel if rel and mount else None

    # -------------------------------------------------------------- start
    def start(self, spec: StartSpec) -> None:
        """Start bwrap with the agent, attach its network through netd (fail closed), record how to reach it.

        bwrap 0.8 sometimes dies setting up the sandbox's own loopback ("loopback: Failed RTM_NEWADDR";
        about one start in a hundred on a busy machine, with or without posture's helper): such a
        sandbox never ran a command, and one fresh sandbox is started in its place."""
        try:
            self._start_once(spec)
        except _SetupRace as first:
            self.stop()
            self._released()  # the helper must have let go of this session before it is attached again
            print(f"posture: {first}; starting a fresh sandbox", file=sys.stderr, flush=True)
            self._start_once(spec)

    def _released(self) -> None:
        """Ask the helper to release this session now, and wait for its answer (stop only notifies it)."""
        from ..netd import client as netd

        try:
            netd.request(self._netd_socket(), {"op": "release", "session": self.record.id}, timeout=15)
        except (OSError, ValueError, netd.NetdError):
            pass

    def _start_once(self, spec: StartSpec) -> None:
        import json
        import select
        import subprocess

        from .. import channel, placeholders, unixsock
        from ..netd import client as netd
        from ..l2 import seccomp
        from ..errors import InternalError, Unavailable

        view = self.view = spec.view
        if view is None:
            raise InternalError("a new L2 session needs its view")
        bwrap = which("bwrap")
        if bwrap is None:
            raise Unavailable("bwrap is not installed", fix="apt-get install bubblewrap")
        if not os.access(PYTHON, os.X_OK):
            raise Unavailable(f"{PYTHON} is missing (the in-sandbox exec agent runs on it)", fix="apt-get install python3")
        sock_path = netd.socket_path(self.settings)
        self.data.update(netd_socket=sock_path, cwd=view.cwd or view.project, project=view.project)
        runtime = self._runtime()
        ipv6 = True
        fs_args, wanted = view_args(view, runtime, ipv6)

        registry = placeholders.registry_for(Path(view.project))
        held = placeholders.acquire(registry, self.record.id, wanted)
        self.data.update(placeholders=held, placeholder_registry=registry)

        agent_sock = runtime / "agent.sock"
        listener = unixsock.listen(agent_sock, 16)
        self.data["socket"] = str(agent_sock)
        door = self._gateway_door(view, runtime)

        filt_r, filt_w = os.pipe2(os.O_CLOEXEC)
        filt = seccomp.build()
        os.write(filt_w, filt)  # a few hundred bytes: fits in the pipe buffer
        os.close(filt_w)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        lfd = listener.fileno()
        argv = [
            bwrap, *hardening_args("posture"),
            *fs_args,
            "--ro-bind", str(channel.GUEST_DIR), AGENT_DIR_INSIDE,
            *door[0],
            "--chdir", view.cwd or view.project,
            "--seccomp", str(filt_r), "--info-fd", str(info_w),
            "--", PYTHON, "-I", "-S", "-c", AGENT_MAIN, "--listen-fd", str(lfd), *door[1],
        ]
        log = open(runtime / "bwrap.log", "wb")
        try:
            self.proc = subprocess.Popen(
                argv, env=dict(view.env.env), pass_fds=(filt_r, info_w, lfd),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, close_fds=True,
            )
        finally:
            log.close()
            for fd in (filt_r, info_w):
                os.close(fd)
            listener.close()
        self.data["bwrap_pid"] = self.proc.pid
        try:
            info = b""
            while not info.rstrip().endswith(b"}"):
                ready, _, _ = select.select([info_r], [], [], INFO_TIMEOUT)
                chunk = os.read(info_r, 4096) if ready else b""
                if not chunk:
                    break
                info += chunk
        finally:
            os.close(info_r)
        try:
            child = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError):
            self._abort(None)
            err = (runtime / "bwrap.log").read_text(errors="replace").strip()
            fix = "see `posture doctor` (unprivileged user namespaces must be allowed)"
            if read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
                fix = ("AppArmor restricts unprivileged user namespaces: allow them for bwrap with an AppArmor profile granting `userns,` "
                       "to /usr/bin/bwrap, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
            raise Unavailable(f"bwrap could not start the sandbox: {err or 'no child pid reported'}", fix=fix)
        self.data["child_pid"] = child
        try:
            answer = netd.request(sock_path, {
                "op": "attach", "session": self.record.id, "pid": child, "ipv6": ipv6,
                "block": list(view.network.extra),
                "network": not view.network.through_gateway,  # False: loopback only, no slirp4netns
            })
        except (OSError, ValueError, netd.NetdError) as exc:
            self._abort(child)
            if isinstance(exc, netd.NetdError) and exc.code == "denied":
                from ..errors import Refused

                raise Refused(f"the network helper refused: {exc}", fix="run posture as the user who owns the session") from None
            raise Unavailable(
                f"L2 network policy cannot be enforced: {exc} (helper socket {sock_path})",
                fix="as root run `posture setup` (it starts the network helper and reloads its rule); `posture doctor` shows the state",
            ) from None
        self.data["box"] = answer["box"]
        self.data["slirp_pid"] = answer.get("slirp_pid")
        if view.network.through_gateway and answer.get("slirp_pid"):
            self._abort(child)
            raise Unavailable(f"network mode {view.network.mode} cannot be enforced: the network helper attached a network anyway "
                              "(it predates network modes)", fix="as root run `posture setup` to update and restart the helper")
        self._until_agent_runs(child, runtime)

    def _until_agent_runs(self, child: int, runtime: Path) -> None:
        """Wait until the sandbox's init has started the exec agent (set-up is over), or bwrap died."""
        import time

        from ..errors import Unavailable

        deadline = time.monotonic() + INFO_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (runtime / "bwrap.log").read_text(errors="replace").strip()
                self._abort(child)
                if "loopback: Failed" in err:
                    raise _SetupRace(f"bwrap failed setting up the sandbox's loopback ({err.splitlines()[-1]})")
                raise Unavailable(f"the sandbox exited during its set-up: {err or 'no message'}", fix=f"see {runtime / 'bwrap.log'}")
            try:
                if Path(f"/proc/{child}/task/{child}/children").read_text().strip():
                    return
            except OSError:
                pass
            time.sleep(0.001)


    def _gateway_door(self, view: Any, runtime: Path) -> tuple[list[str], list[str]]:
        """Start the session's one gateway process (gateway/door.py) and return the bwrap arguments binding
        its socket in, and the agent's forwarder from the sandbox's own loopback to it."""
        from .. import gateway
        from ..gateway import door

        self.door = door.open_door(view, runtime, self.record.id, self.data)
        if self.door is None:
            return [], []
        return (["--ro-bind", self.door.socket, gateway.SOCKET_INSIDE],
                ["--forward", f"127.0.0.1:{gateway.INSIDE_PORT}={gateway.SOCKET_INSIDE}"])

    def _abort(self, child: int | None) -> None:
        """Kill a sandbox whose network could not be attached (its agent never got a command)."""
        if child:
            _kill_if_bwrap(child)  # pid 1 of the sandbox's pid namespace: the kernel kills the rest
        self.proc.kill()
        self.proc.wait()

    # -------------------------------------------------------------- exec / attach
    def exec(self, argv: list[str], tty: bool) -> int:
        """Run `argv` in the sandbox through the exec agent."""
        import socket

        from .. import channel
        from ..errors import Unavailable

        # The host bound the agent's socket before bwrap started, so a refused connection
        # means the sandbox is gone (an agent still booting just has not accepted yet).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.data["socket"])
        except OSError as exc:
            sock.close()
            raise Unavailable(f"session {self.record.id}'s sandbox is not running ({exc.strerror})",
                              fix=f"`posture down --session {self.record.id}` and start a new one") from None
        try:
            return channel.run(sock, list(argv), env=None, cwd=self.data.get("cwd") or self.record.project, tty=tty)
        finally:
            sock.close()

    def alive(self) -> bool:
        """True while the sandbox runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        from ..netd import cgroups

        box = self.data.get("box")
        return bool(box) and cgroups.populated(str(box))

    # -------------------------------------------------------------- stop / freeze
    def stop(self) -> None:
        """Kill every process of the sandbox, release its network, remove its placeholders."""
        import signal

        from ..netd import client as netd

        if self.data.get("box") and self.data.get("network_mode") == "public" and self.data.get("egress_log"):
            from ..gateway import door

            door.report_kernel_drops(self._netd_socket(), self.record.id, self.record.level, self.data)  # before the kill:
            # the helper removes the session's counters when its sandbox exits
        box = self._box_dir()
        if box is not None:
            try:
                (box / "cgroup.kill").write_text("1")
            except OSError:
                pass
        if self.data.get("child_pid"):
            _kill_if_bwrap(int(self.data["child_pid"]))  # the sandbox's pid 1: its pid namespace dies with it
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        elif self.data.get("bwrap_pid"):
            _kill_if_bwrap(int(self.data["bwrap_pid"]))
        if self.data.get("box"):
            # Every process of the sandbox is dead by now; the helper stops slirp4netns and removes the
            # session's cgroups and rules on its own time (it also does when it sees the sandbox's first
            # process exit), so do not wait for its answer: that is on the agent's hot path.
            try:
                netd.notify(self._netd_socket(), {"op": "release", "session": self.record.id})
            except OSError:
                pass
        if self.door is not None or self.data.get("gateway_pid") or self.data.get("egress_pid"):
            from ..gateway import door

            door.close_door(self.door, self.data)
            self.door = None
        registry = self.data.get("placeholder_registry")
        if registry and self.data.get("placeholders"):
            release_placeholders(registry, self.record.id)
            self.data["placeholders"] = []
        sock = self.data.get("socket")
        if sock:
            try:
                os.unlink(sock)
            except OSError:
                pass

    def _freeze(self, frozen: bool) -> None:
        from ..errors import Unavailable
        from ..netd import cgroups

        box = self._box_dir()
        if box is None or not box.is_dir():
            raise Unavailable(f"session {self.record.id} has no cgroup to freeze", fix="see `posture status`")
        try:
            cgroups.freeze(str(self.data["box"]), frozen)
        except TimeoutError:
            raise Unavailable(f"session {self.record.id} did not {'freeze' if frozen else 'thaw'}", fix="`posture down` it") from None

    def freeze(self) -> None:
        """Freeze every process of the sandbox (its cgroup's cgroup.freeze)."""
        self._freeze(True)

    def thaw(self) -> None:
        """Undo `freeze`."""
        self._freeze(False)

    def describe(self) -> dict[str, Any]:
        """Status facts: the record plus the sandbox's pids and cgroup."""
        out = self.record.public()
        out.update({k: self.data.get(k) for k in ("bwrap_pid", "child_pid", "box", "slirp_pid")})
        return out


def _kill_if_bwrap(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            name = os.path.basename(fh.read().split(b"\0", 1)[0])
        if name == b"bwrap" and os.stat(f"/proc/{pid}").st_uid == os.getuid():
            os.kill(pid, 9)
    except OSError:
        pass
