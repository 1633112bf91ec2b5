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
import shutil
from pathlib import Path
from typing import Any

from ..hookspecs import hookimpl
from ..session import Availability, Backend, Check, Session, SessionRecord

AGENT_DIR_INSIDE = "/run/posture/agent"
PYTHON = "/usr/bin/python3"
SLIRP_DNS4, SLIRP_DNS6 = "10.0.2.3", "fd00::3"
INFO_TIMEOUT = 10.0
# The agent is imported rather than run as a script, so Python uses its compiled .pyc from the
# package (a script is compiled from source on every start: a few ms before the first command).
AGENT_MAIN = f"import sys; sys.path.insert(0, {AGENT_DIR_INSIDE!r}); import agent; sys.exit(agent.main())"


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ====================================================================== view -> bwrap arguments

def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def system_args(system_ro: list[str], skip: set[str]) -> list[str]:
    """Read-only binds of system paths; symlinks stay symlinks when their target is in view."""
    args: list[str] = []
    real_dirs = [p for p in system_ro if not os.path.islink(p)]
    for path in system_ro:
        if path in skip:
            continue
        if os.path.islink(path):
            real = os.path.realpath(path)
            if _under(real, real_dirs):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.exists(real):
                args += ["--ro-bind", real, path]  # resolve a chain that leaves the view (e.g. into /run)
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def view_args(view: Any, runtime: Path, ipv6: bool = True) -> tuple[list[str], list[tuple[str, bool]]]:
    """The filesystem part of bwrap's command line for `view`, and the placeholders it needs.

    Generated files (passwd, group, resolv.conf) are written into `runtime` (a private
    host directory) and bound read-only.
    """
    from .. import placeholders

    etc = runtime / "etc"
    etc.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = dict(view.files)
    files["/etc/resolv.conf"] = f"nameserver {SLIRP_DNS4}\n" + (f"nameserver {SLIRP_DNS6}\n" if ipv6 else "")
    args = system_args(list(view.system_ro), skip=set(files))
    for target, content in files.items():
        src = etc / Path(target).name
        src.write_text(content)
        args += ["--ro-bind", str(src), target]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]
    args += ["--perms", "0700", "--tmpfs", view.home]
    for bind in view.binds:
        if not os.path.exists(bind.source):
            continue
        args += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]
    args += ["--bind", view.project, view.project]
    wanted: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for path in view.protected:
        point, is_dir = placeholders.mount_point(view.project, path)
        if point in seen:
            continue
        seen.add(point)
        if os.path.islink(point):
            real = os.path.realpath(point)
            if _under(real, [view.project]) and os.path.exists(real):
                args += ["--ro-bind", real, real]
            continue
        if not os.path.lexists(point):
            wanted.append((point, is_dir))
        args += ["--ro-bind", point, point]
    for path in view.denied:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.lexists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args, wanted


def hardening_args(hostname: str) -> list[str]:
    """Namespaces, session, capabilities: the part of the command line that does not depend on the view."""
    return [
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--hostname", hostname,
    ]


# ====================================================================== session

class BwrapSession(Session):
    """One bwrap sandbox, its network (via netd) and its exec agent."""

    def __init__(self, record: SessionRecord, view: Any, settings: Any) -> None:
        super().__init__(record)
        self.view = view
        self.settings = settings
        self.proc: Any = None

    # -------------------------------------------------------------- helpers
    @property
    def data(self) -> dict[str, Any]:
        return self.record.data

    def _runtime(self) -> Path:
        from ..session import session_runtime_dir

        return session_runtime_dir(self.record.id)

    def _netd_socket(self) -> str:
        from .. import netd

        return self.data.get("netd_socket") or netd.socket_path(self.settings)

    def _box_dir(self) -> Path | None:
        from .. import cgroups

        rel = self.data.get("box")
        mount = cgroups.v2_mount()
        return mount / rel if rel and mount else None

    # -------------------------------------------------------------- start
    def start(self) -> None:
        """Start bwrap with the agent, attach its network through netd (fail closed), record how to reach it."""
        import json
        import select
        import socket
        import subprocess

        from .. import channel, netd, placeholders, seccomp
        from ..errors import InternalError, Unavailable

        view = self.view
        if view is None:
            raise InternalError("a new L2 session needs its view")
        bwrap = _which("bwrap")
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
        try:
            agent_sock.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            listener.bind(str(agent_sock))
        finally:
            os.umask(old)
        listener.listen(16)
        self.data["socket"] = str(agent_sock)

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
            "--chdir", view.cwd or view.project,
            "--seccomp", str(filt_r), "--info-fd", str(info_w),
            "--", PYTHON, "-I", "-S", "-c", AGENT_MAIN, "--listen-fd", str(lfd),
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
            if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
                fix = ("AppArmor restricts unprivileged user namespaces: allow them for bwrap with an AppArmor profile granting `userns,` "
                       "to /usr/bin/bwrap, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
            raise Unavailable(f"bwrap could not start the sandbox: {err or 'no child pid reported'}", fix=fix)
        self.data["child_pid"] = child
        try:
            answer = netd.request(sock_path, {
                "op": "attach", "session": self.record.id, "pid": child, "ipv6": ipv6,
                "block": list(getattr(view.network, "extra", ())),
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

    def attach(self) -> int:
        """Attach the terminal to the agent's tmux session inside."""
        return self.exec(["tmux", "-L", "posture", "attach", "-t", "agent"], tty=True)

    def alive(self) -> bool:
        """True while the sandbox runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        from .. import cgroups

        box = self.data.get("box")
        return bool(box) and cgroups.populated(box)

    # -------------------------------------------------------------- stop / freeze
    def stop(self) -> None:
        """Kill every process of the sandbox, release its network, remove its placeholders."""
        import signal

        from .. import netd, placeholders
        from ..session import SessionStore

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
        registry = self.data.get("placeholder_registry")
        if registry and self.data.get("placeholders"):
            def live() -> set[str]:
                return {r.id for r in SessionStore().live(None) if r.id != self.record.id}

            placeholders.release(registry, self.record.id, live)
            self.data["placeholders"] = []
        sock = self.data.get("socket")
        if sock:
            try:
                os.unlink(sock)
            except OSError:
                pass

    def _freeze(self, frozen: bool) -> None:
        import time

        from ..errors import Unavailable

        box = self._box_dir()
        if box is None or not box.is_dir():
            raise Unavailable(f"session {self.record.id} has no cgroup to freeze", fix="see `posture status`")
        (box / "cgroup.freeze").write_text("1" if frozen else "0")
        want = f"frozen {1 if frozen else 0}"
        deadline = time.monotonic() + 5
        while want not in (box / "cgroup.events").read_text():
            if time.monotonic() > deadline:
                raise Unavailable(f"session {self.record.id} did not {'freeze' if frozen else 'thaw'}", fix="`posture down` it")
            time.sleep(0.005)

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


# ====================================================================== backend

class BwrapBackend(Backend):
    """L2: bubblewrap with kernel-enforced network policy."""

    name = "bwrap"
    level = "l2"
    description = "bubblewrap sandbox; network through slirp4netns from an nftables-filtered cgroup (posture netd)"

    def availability(self, settings: Any) -> Availability:
        """Fast checks only: the binaries and the helper's socket (the rule is verified at session start)."""
        from .. import netd

        if _which("bwrap") is None:
            return Availability(False, "bwrap is not installed", "apt-get install bubblewrap")
        if _which("slirp4netns") is None:
            return Availability(False, "slirp4netns is not installed", "apt-get install slirp4netns")
        if not os.access(PYTHON, os.X_OK):
            return Availability(False, f"{PYTHON} is missing (the in-sandbox exec agent runs on it)", "apt-get install python3")
        sock = netd.socket_path(settings)
        if not os.path.exists(sock):
            return Availability(False, f"the network helper is not running (no socket at {sock})", "as root run `posture setup`")
        return Availability(True, "bwrap + slirp4netns + posture netd")

    def doctor(self, settings: Any) -> list[Check]:
        """Every L2 prerequisite, each failing one with its fix."""
        import subprocess

        from .. import cgroups, netd, seccomp

        checks: list[Check] = []
        bwrap = _which("bwrap")
        checks.append(Check("bwrap", bool(bwrap), bwrap or "not installed", "apt-get install bubblewrap"))
        restrict = _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        clone = _read_int("/proc/sys/kernel/unprivileged_userns_clone")
        max_ns = _read_int("/proc/sys/user/max_user_namespaces")
        if clone == 0:
            checks.append(Check("user namespaces", False, "kernel.unprivileged_userns_clone=0", "sysctl -w kernel.unprivileged_userns_clone=1"))
        elif max_ns == 0:
            checks.append(Check("user namespaces", False, "user.max_user_namespaces=0", "sysctl -w user.max_user_namespaces=15000"))
        elif bwrap:
            # The real test: AppArmor's restriction (Ubuntu 23.10+) may or may not cover bwrap.
            proc = subprocess.run([bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--ro-bind", "/", "/", "--", "/bin/true"],
                                  capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
            fix = "allow unprivileged user namespaces (see the sysctls kernel.unprivileged_userns_clone, user.max_user_namespaces)"
            if restrict == 1:
                fix = ("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1): install an AppArmor "
                       "profile granting `userns,` to /usr/bin/bwrap, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (persist in /etc/sysctl.d)")
            detail = "bwrap can create its namespaces" if proc.returncode == 0 else f"bwrap failed: {proc.stderr.strip()}"
            if restrict == 1 and proc.returncode == 0:
                detail += " (AppArmor's userns restriction is on, and bwrap is allowed)"
            checks.append(Check("user namespaces", proc.returncode == 0, detail, fix))
        try:
            seccomp.build()
            checks.append(Check("seccomp filter", True, "built for this architecture"))
        except RuntimeError as exc:
            checks.append(Check("seccomp filter", False, str(exc), "run L2 on x86_64 or aarch64, or use L3"))
        slirp = _which("slirp4netns")
        checks.append(Check("slirp4netns", bool(slirp), slirp or "not installed", "apt-get install slirp4netns"))
        checks.append(Check("exec agent python", os.access(PYTHON, os.X_OK), PYTHON, "apt-get install python3"))
        mount = cgroups.v2_mount()
        checks.append(Check("cgroup v2", mount is not None, str(mount) if mount else "no cgroup2 mount", "mount -t cgroup2 none /sys/fs/cgroup/unified"))
        sock = netd.socket_path(settings)
        try:
            st = netd.request(sock, {"op": "status"}, timeout=5)
            checks.append(Check("network helper", bool(st.get("verified")), f"{sock}: {st.get('detail')} ({st.get('cgroup_dir')})",
                                "as root run `posture setup` (restarts the helper, reloading its rule for the cgroup's current id)"))
        except (OSError, ValueError, netd.NetdError) as exc:
            checks.append(Check("network helper", False, f"{sock}: not reachable ({exc})", "as root run `posture setup`"))
        return checks

    def setup(self, settings: Any, options: dict[str, Any]) -> list[str]:
        """Start (or install as a systemd unit) the network helper in this network namespace."""
        from .. import netd
        from ..errors import Refused, Unavailable

        if os.geteuid() != 0:
            raise Refused("posture setup must run as root (the network helper loads nftables rules)", fix="sudo posture setup")
        for tool in ("nft", "slirp4netns", "bwrap"):
            if _which(tool) is None:
                raise Unavailable(f"{tool} is not installed", fix="apt-get install nftables slirp4netns bubblewrap")
        try:
            return netd.start(netd.socket_path(settings))
        except (RuntimeError, OSError) as exc:
            raise Unavailable(f"the network helper did not start: {exc}", fix="see the log next to the socket; `posture doctor`") from None

    def teardown(self, settings: Any) -> list[str]:
        """Stop the network helper (and remove its systemd unit)."""
        from .. import netd
        from ..errors import Refused

        if os.geteuid() != 0:
            raise Refused("posture setup --remove must run as root", fix="sudo posture setup --remove")
        return netd.stop(netd.socket_path(settings))

    def session(self, record: SessionRecord, view: Any, settings: Any) -> Session:
        """A session for `record` (view is None when re-opened by a later command)."""
        return BwrapSession(record, view, settings)


@hookimpl
def posture_backends() -> list[Backend]:
    """The L2 backend."""
    return [BwrapBackend()]


@hookimpl
def posture_commands(app: Any) -> None:
    """`posture netd`: run the root network helper in the foreground."""
    import typer

    @app.command("netd")
    def netd_command(
        socket: str = typer.Option(None, "--socket", help="Unix socket to serve (default /run/posture/netd.sock or POSTURE_NETD_SOCKET)."),
        cgroup: str = typer.Option(None, "--cgroup", help="cgroup (relative to the v2 root) the helper owns (default: posture)."),
        table: str = typer.Option("posture", "--table", help="nftables table (inet family) the helper loads."),
        no_ipv6: bool = typer.Option(False, "--no-ipv6", help="Give sandboxes IPv4 only."),
        pidfile: str = typer.Option(None, "--pidfile", help="Write the helper's pid here."),
    ) -> int:
        """Root: run the L2 network helper (nftables rule + slirp4netns per sandbox) in the foreground."""
        from .. import netd

        argv = ["--socket", socket or netd.socket_path(None), "--table", table]
        if cgroup:
            argv += ["--cgroup", cgroup]
        if no_ipv6:
            argv.append("--no-ipv6")
        if pidfile:
            argv += ["--pidfile", pidfile]
        return netd.main(argv)
