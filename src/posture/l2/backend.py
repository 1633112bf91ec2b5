"""The L2 backend: availability, doctor, `posture setup` of the network helper, and `posture netd`."""

from __future__ import annotations

import os
from typing import Any

from ..session import Availability, Backend, Check, Session, SessionRecord
from .argv import read_int, which

PYTHON = "/usr/bin/python3"


class BwrapBackend(Backend):
    """L2: bubblewrap with kernel-enforced network policy."""

    name = "bwrap"
    level = "l2"
    description = "bubblewrap sandbox; network through slirp4netns from an nftables-filtered cgroup (posture netd)"

    def availability(self, settings: Any) -> Availability:
        """Fast checks only: the binaries and the helper's socket (the rule is verified at session start)."""
        from ..netd import client as netd

        if which("bwrap") is None:
            return Availability(False, "bwrap is not installed", "apt-get install bubblewrap")
        if which("slirp4netns") is None:
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

        from ..netd import client as netd
        from ..netd import cgroups
        from ..l2 import seccomp

        checks: list[Check] = []
        bwrap = which("bwrap")
        checks.append(Check("bwrap", bool(bwrap), bwrap or "not installed", "apt-get install bubblewrap"))
        restrict = read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        clone = read_int("/proc/sys/kernel/unprivileged_userns_clone")
        max_ns = read_int("/proc/sys/user/max_user_namespaces")
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
        slirp = which("slirp4netns")
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
        from ..errors import Refused, Unavailable
        from ..netd import client as netd
        from ..netd import service

        if os.geteuid() != 0:
            raise Refused("posture setup must run as root (the network helper loads nftables rules)", fix="sudo posture setup")
        for tool in ("nft", "slirp4netns", "bwrap"):
            if which(tool) is None:
                raise Unavailable(f"{tool} is not installed", fix="apt-get install nftables slirp4netns bubblewrap")
        try:
            return service.start(netd.socket_path(settings))
        except (RuntimeError, OSError) as exc:
            raise Unavailable(f"the network helper did not start: {exc}", fix="see the log next to the socket; `posture doctor`") from None

    def teardown(self, settings: Any, purge: bool = False) -> list[str]:
        """Stop the network helper (and remove its systemd unit)."""
        from ..errors import Refused
        from ..netd import client as netd
        from ..netd import service

        if os.geteuid() != 0:
            raise Refused("posture setup --remove must run as root", fix="sudo posture setup --remove")
        return service.stop(netd.socket_path(settings))

    def session(self, record: SessionRecord, settings: Any) -> Session:
        """A session for `record` (new, or re-opened by a later command)."""
        from .session import BwrapSession

        return BwrapSession(record, settings)


def add_commands(app: Any) -> None:
    """`posture netd`: run the root network helper in the foreground."""
    import typer

    from ..netd.limits import Limits

    d = Limits()

    @app.command("netd")
    def netd_command(
        socket: str = typer.Option(None, "--socket", help="Unix socket to serve (default /run/posture/netd.sock or POSTURE_NETD_SOCKET)."),
        cgroup: str = typer.Option(None, "--cgroup", help="cgroup (relative to the v2 root) the helper owns (default: posture)."),
        table: str = typer.Option("posture", "--table", help="nftables table (inet family) the helper loads."),
        no_ipv6: bool = typer.Option(False, "--no-ipv6", help="Give sandboxes IPv4 only."),
        pidfile: str = typer.Option(None, "--pidfile", help="Write the helper's pid here."),
        max_connections: int = typer.Option(d.max_connections, "--max-connections", help="Connections open at once, all users together."),
        max_per_uid: int = typer.Option(d.max_per_uid, "--max-per-uid", help="Connections open at once by one uid."),
        max_sessions_per_uid: int = typer.Option(d.max_sessions_per_uid, "--max-sessions-per-uid", help="Sandboxes attached at once by one uid."),
        request_timeout: float = typer.Option(d.request_timeout, "--request-timeout", help="Seconds a connection has to send its request."),
    ) -> int:
        """Root: run the L2 network helper (nftables rule + slirp4netns per sandbox) in the foreground."""
        from ..netd import client as netd

        argv = ["--socket", socket or netd.socket_path(None), "--table", table]
        if cgroup:
            argv += ["--cgroup", cgroup]
        if no_ipv6:
            argv.append("--no-ipv6")
        if pidfile:
            argv += ["--pidfile", pidfile]
        argv += ["--max-connections", str(max_connections), "--max-per-uid", str(max_per_uid),
                 "--max-sessions-per-uid", str(max_sessions_per_uid), "--request-timeout", str(request_timeout)]
        from ..netd.__main__ import main

        return main(argv)
