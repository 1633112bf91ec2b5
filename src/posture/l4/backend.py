"""The L4 backend: is a tailnet host configured, online and pinned (`availability`, `doctor`), and the
`posture l4 enroll` command."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import PostureError, Unavailable, UsageError
from ..session import Availability, Backend, Check, Session, SessionRecord

# Default key names of ssh-keygen: a key with one of these names in ~/.ssh is the user's general key.
GENERAL_KEYS = ("id_rsa", "id_ed25519", "id_ecdsa", "id_dsa", "id_ed25519_sk", "id_ecdsa_sk")


def paths_hint() -> str:
    """Where a dedicated L4 key could live."""
    from .. import paths

    return str(paths.config_dir() / "l4_ed25519")


class TailnetBackend(Backend):
    """L4: a remote host on the user's tailnet, reached by pinned SSH."""

    name = "tailnet"
    level = "l4"
    description = "remote host over Tailscale (pinned SSH, git sync, tmux)"

    def _config(self, settings: Any) -> tuple[dict[str, Any], Availability | None]:
        from ..l4 import ssh

        l4 = ssh.settings_l4(settings)
        for key in ("host", "user", "identity"):
            if not l4.get(key):
                try:
                    ssh.require(l4, key)
                except UsageError as exc:
                    return l4, Availability(False, exc.message, exc.fix or "")
        identity = Path(str(l4["identity"])).expanduser()
        if not identity.is_file():
            return l4, Availability(False, f"[l4] identity {identity} does not exist", f"create it with `ssh-keygen -t ed25519 -N '' -f {identity}` and authorise its .pub on the host")
        if importlib.util.find_spec("paramiko") is None:
            return l4, Availability(False, "paramiko is not installed", "pip install 'posture[l4]'")
        return l4, None

    def availability(self, settings: Any) -> Availability:
        """Configured, tailnet up, peer online and not expired, host key pinned (no connection is made)."""
        from ..l4 import hostkeys, tailscale

        l4, problem = self._config(settings)
        if problem:
            return problem
        try:
            peer = tailscale.find_peer(str(l4["host"]))
        except Unavailable as exc:
            return Availability(False, exc.message, exc.fix or "")
        entry = hostkeys.host_entry(peer.ip, int(l4.get("port") or 22))
        if not hostkeys.read_pins(entry):
            return Availability(False, f"no host key is pinned for {peer.dns_name or l4['host']} ({entry})", "run `posture l4 enroll`")
        return Availability(True)

    def doctor(self, settings: Any) -> list[Check]:
        """Tailscale CLI, peer online, host key pinned, SSH login, git and tmux on the host."""
        from ..l4 import hostkeys, ssh, tailscale

        checks: list[Check] = []
        l4, problem = self._config(settings)
        if problem:
            return [Check("config", False, problem.reason, problem.fix)]
        checks.append(Check("config", True, f"[l4] host={l4['host']} user={l4['user']} port={l4.get('port') or 22}"))
        identity = Path(str(l4["identity"])).expanduser()
        general = identity.parent == Path.home() / ".ssh" and identity.name in GENERAL_KEYS
        checks.append(Check("identity", not general, f"{identity}" + (" is your general SSH key" if general else ""),
                            f"make a key for this host only: ssh-keygen -t ed25519 -N '' -f {paths_hint()} and set [l4] identity to it"))
        exe = shutil.which("tailscale")
        checks.append(Check("tailscale CLI", bool(exe), exe or "not on PATH", "install Tailscale and run `tailscale up`"))
        if not exe:
            return checks
        try:
            peer = tailscale.find_peer(str(l4["host"]))
        except Unavailable as exc:
            checks.append(Check("peer", False, exc.message, exc.fix or ""))
            return checks
        checks.append(Check("peer", True, f"{peer.dns_name or peer.host_name} {peer.ip} online"))
        entry = hostkeys.host_entry(peer.ip, int(l4.get("port") or 22))
        pins = hostkeys.read_pins(entry)
        checks.append(Check("host key pinned", bool(pins), ", ".join(k.fingerprint() for k in pins) or f"nothing pinned for {entry}", "run `posture l4 enroll`"))
        if not pins:
            return checks
        try:
            client = ssh.connect(ssh.target_for(l4, peer.ip, peer.dns_name or str(l4["host"])))
        except PostureError as exc:
            checks.append(Check("ssh login", False, exc.message, exc.fix or ""))
            return checks
        try:
            checks.append(Check("ssh login", True, f"{l4['user']}@{peer.ip}:{l4.get('port') or 22}"))
            for tool, package in (("git", "git"), ("tmux", "tmux")):
                code, out, _ = ssh.run_script(client, f"command -v {tool}")
                checks.append(Check(f"{tool} on host", code == 0, out.strip() or "not found", f"install {package} on the host (apt-get install {package})"))
            checks.append(_agent_on_host(client, settings))
            # the agent's state travels as a tar unpacked with GNU options; spare trees move with `mv -T`
            code, out, _ = ssh.run_script(client, "tar --version | head -n1; mv --version | head -n1")
            gnu = code == 0 and out.count("GNU") >= 2
            checks.append(Check("GNU tar and coreutils on host", gnu, " / ".join(out.strip().splitlines()) or "not found",
                                "install GNU tar and coreutils on the host (apt-get install tar coreutils)"))
        finally:
            client.close()
        return checks

    remote_work = True

    def session(self, record: SessionRecord, settings: Any) -> Session:
        """A TailnetSession for `record`."""
        from .session import TailnetSession

        return TailnetSession(record, settings)


def add_commands(app: Any) -> None:
    """`posture l4 enroll [--yes]` (`posture pull` is the core's; it calls TailnetSession.pull)."""
    import typer

    l4_app = typer.Typer(help="The L4 host: pin its SSH host key.", no_args_is_help=True)

    @l4_app.command("enroll")
    def enroll_cmd(yes: bool = typer.Option(False, "--yes", help="Accept the presented host key without asking (for scripts).")) -> int:
        """Pin the L4 host's SSH host key (from the tailnet, or confirmed by its fingerprint)."""
        from .. import audit
        from ..plugins import load_settings
        from ..l4 import enroll

        confirm = (lambda q: typer.confirm(q, default=False)) if sys.stdin.isatty() else None
        result = enroll.enroll(load_settings(Path.cwd()), yes, confirm, say=lambda line: print(line, file=sys.stderr))
        audit.record("l4.enroll", entry=result.entry, source=result.source, keys=[k.fingerprint() for k in result.keys],
                     replaced=[k.fingerprint() for k in result.replaced], login=result.login)
        return 0

    app.add_typer(l4_app, name="l4")


def _agent_on_host(client: Any, settings: Any) -> Check:
    """Whether the default profile's agent is on the host's PATH (L4 runs the host's own toolchains)."""
    import shlex

    from .. import envpolicy, profiles
    from . import ssh

    try:
        profile = profiles.load(settings.profile)
    except PostureError as exc:
        return Check("agent on host", False, exc.message, exc.fix or "")
    program = profile.command[0]
    code, out, _ = ssh.run_script(client, f"PATH={shlex.quote(envpolicy.SANDBOX_PATH)} command -v {shlex.quote(program)}")  # the PATH sessions get there
    return Check(f"agent on host ({profile.name})", code == 0, out.strip() or f"{program} not found on the host's PATH",
                 f"install {program} on the host for the user posture logs in as (for Claude Code: npm install -g @anthropic-ai/claude-code)")
