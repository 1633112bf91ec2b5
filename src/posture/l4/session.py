"""The L4 session: the work tree and the agent live on a remote host of the user's tailnet.

Pinned agent-less SSH (ssh.py, hostkeys.py) after discovery (tailscale.py), code out as a
git checkpoint and work back as review refs (sync.py over relay.py), the agent's state
carried incrementally (state.py), and the agent in a per-session tmux server on the host.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from .. import checkpoint, envpolicy, gitutil
from ..errors import InternalError, PostureError, Unavailable, UsageError
from ..session import PullResult, Session, SessionRecord, StartSpec
from ..terminal import AgentTerminal

# Local values that mean nothing on the host; posture sets the host's own instead.
HOST_SPECIFIC = ("HOME", "USER", "LOGNAME", "SHELL", "PATH", "TMPDIR", "PWD", "OLDPWD", "MAIL")


def remote_env(view_env: dict[str, str], session: str, home: str, user: str, sentinels: frozenset[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
    """The environment for commands on the host: the view's allowlisted, non-secret variables with
    the host's own HOME/USER/PATH; and the names left out. Credentials never travel to L4: only the
    gateway's sentinels (`sentinels`: the names whose values the session's gateway put in the view)."""
    env: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in view_env.items():
        if name in HOST_SPECIFIC or name in envpolicy.NEVER_PASS:
            continue
        if envpolicy.secret_looking(name) and name not in sentinels:
            dropped.append(name)
            continue
        env[name] = value
    env.update({
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/sh",
        "PATH": envpolicy.SANDBOX_PATH,
        "POSTURE_LEVEL": "l4",
        "POSTURE_SESSION": session,
    })
    return env, sorted(dropped)


class TailnetSession(Session):
    """A session whose work tree and agent live on the L4 host."""

    def __init__(self, record: SessionRecord, settings: Any) -> None:
        super().__init__(record)
        self.view: Any = None
        self.launch_argv: list[str] | None = None
        self.settings = settings
        self._client: Any = None
        self.gateway: Any = None  # posture.gateway.launch.Running, in the process holding the session

    # ------------------------------------------------------------ connection

    @property
    def l4(self) -> dict[str, Any]:
        from ..l4 import ssh

        return ssh.settings_l4(self.settings)

    @property
    def tmux_socket(self) -> str:
        """The per-session tmux server name on the (shared) host."""
        return f"posture-{self.record.id}"

    @property
    def terminal(self) -> AgentTerminal:
        """A tmux server of its own: the host is shared by every session of the user."""
        return AgentTerminal(self.tmux_socket)

    def client(self):
        """The pinned SSH connection (opened once per process)."""
        if self._client is None or not self._client.get_transport() or not self._client.get_transport().is_active():
            from ..l4 import ssh, tailscale

            host = str(ssh.require(self.l4, "host"))
            peer = tailscale.find_peer(host)
            self._client = ssh.connect(ssh.target_for(self.l4, peer.ip, peer.dns_name or host))
            self.record.data.setdefault("peer", {"host": host, "ip": peer.ip, "name": peer.dns_name})
        return self._client

    def close(self) -> None:
        """Close the SSH connection."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _data(self, key: str) -> Any:
        value = self.record.data.get(key)
        if value is None:
            raise UsageError(f"session {self.record.id} was never synced to the L4 host", fix=f"`posture down --session {self.record.id}` and start a new one")
        return value

    # ------------------------------------------------------------ lifecycle

    def start(self, spec: StartSpec) -> None:
        """Sync the checkpoint to the host and check it out into this session's work tree there; launch
        `spec.launch` there in the same round trip."""
        import threading

        self.view, self.launch_argv = spec.view, spec.launch

        from ..l4 import ssh, sync

        # log in (tailscale lookup, paramiko import, SSH handshake) while git works here
        login: dict[str, Any] = {}

        def connect() -> None:
            try:
                login["client"] = self.client()
            except BaseException as exc:  # noqa: BLE001 - raised in the caller below
                login["error"] = exc

        connecting = threading.Thread(target=connect, daemon=True)
        connecting.start()
        project = Path(self.record.project)
        layout = sync.Layout.from_config(self.l4.get("workdir"))
        key = gitutil.project_key(project)
        bare = layout.bare(key)
        worktree = layout.worktree(self.record.id)
        spare = layout.spare(key)
        ref = self.record.data.get("checkpoint_ref") or spec.checkpoint
        if ref:  # escalation: start from the checkpoint the lower session left
            commit = sync.resolve(project, ref)
            if commit is None:
                raise UsageError(f"checkpoint {ref} does not exist in {project}", fix="see `posture status` for the session's checkpoints")
        else:
            ckpt = checkpoint.capture(project, self.record.id, f"posture: checkpoint sent to L4 for session {self.record.id}")
            ref, commit = ckpt.ref, ckpt.commit
        if ref not in self.record.checkpoints:
            self.record.checkpoints.append(ref)
        user = str(ssh.require(self.l4, "user"))
        view_env = dict(self.view.env.env) if self.view is not None else {}
        brokered = getattr(self.view, "gateway", None)
        brokered = brokered if brokered is not None and brokered.active else None
        sentinels = frozenset(brokered.env) if brokered else frozenset()
        env, dropped = remote_env(view_env, self.record.id, "", user, sentinels)  # HOME is known once the host answers
        if brokered is None:
            then, then_args, tar, send = self._then(layout, key, env)
        connecting.join()
        if "error" in login:
            raise login["error"]
        client = login["client"]
        if brokered is not None:
            # the agent's base URL is the host's end of a forward on this very connection
            port = self._open_gateway(brokered, client)
            if brokered.base_url_env:
                env[brokered.base_url_env] = brokered.inside_url(port)
            then, then_args, tar, send = self._then(layout, key, env)
        self.record.data.update({"bare": bare, "checkpoint_ref": ref, "checkpoint_commit": commit, "tmux": self.tmux_socket, "spare": spare})
        sync.push(client, project, commit, ref, bare)
        self.record.data["worktree"] = worktree  # until the host answers: so that stop() cleans up after a failure
        # one round trip: the work tree (a spare brought up to date, or a full checkout), the agent's
        # state, and the agent itself when asked for up front (escalate does: launch_argv)
        tree = sync.checkout(client, bare, worktree, commit, spare, then=then, then_args=then_args, stdin=tar)
        home, abs_worktree = tree.home, tree.worktree
        more = tree.more
        if more[:1] == ("state-stale",):
            # the host lost (or never had) the state posture sent: everything again, then the agent
            then, then_args, tar, send = self._then(layout, key, env, full=True)
            code, out, err = ssh.run_script(client, 'set -e; H=$(pwd -P); Wabs=$1; shift\n' + then, argv=[abs_worktree, *then_args], stdin=tar)
            more = tuple(out.strip().splitlines())
            if code != 0 or more[:1] == ("state-stale",):
                raise Unavailable(f"carrying the agent's state to the host failed: {err.strip()[-300:]}", fix="check disk space and tar on the host")
        if send is not None:
            from ..l4 import state

            state.record_sent(self.view, self._state_key(then_args[0]), send)
        agent_home = more[0] if self.view is not None else home
        env["HOME"] = agent_home
        self.record.data.update({"tree": tree.admin, "tree_reused": tree.reused, "worktree": abs_worktree, "home": home,
                                 "agent_home": agent_home, "env": env, "env_not_sent": dropped})
        if self.launch_argv:
            if more[-1:] != ("launched",):
                raise InternalError("could not start the agent on the L4 host (tmux failed)")
            self.record.data["launched"] = list(self.launch_argv)

    def _open_gateway(self, brokered: Any, client: Any) -> int:
        """Start the session's gateway here and open its door on the host; return the host's port."""
        from ..gateway import launch
        from ..l4 import door
        from ..session import session_runtime_dir

        self.gateway = launch.start(brokered, session_runtime_dir(self.record.id), self.record.id)
        self.record.data.update(self.gateway.facts())
        try:
            port = door.open_door(client.get_transport(), self.gateway.socket)
        except Exception as exc:  # noqa: BLE001 - paramiko raises SSHException; reported as unavailable
            raise Unavailable(f"the L4 host refused the forward to the session's gateway: {exc}",
                              fix="allow TCP forwarding for posture's user in the host's sshd_config (AllowTcpForwarding)") from None
        self.record.data["gateway_port"] = port
        return port

    def _then(self, layout, project_key: str, env: dict[str, str], full: bool = False) -> tuple[str, list[str], bytes, Any]:
        """The part of the start script after the checkout: receive the project's agent state (never
        credential files; only what changed since the last send to this host) and the session's
        sentinel credential files into its state home on the host, map the working-directory keys
        ($AH = that home); then launch the agent if asked to. Prints $AH (or "state-stale": the host's state
        home is not the one posture last sent to, and nothing was launched), then "launched"."""
        from .. import profiles
        from ..l4 import ssh, state

        script, args, tar, send = "AH=$H\n", [], b"", None
        if self.view is not None:
            profile = profiles.load(self.record.profile)
            remote = state.remote_state_home(layout.workdir, project_key, profile.name)
            send = state.plan_send(self.view, profile.credential_files, self._state_key(remote), full=full)
            self.record.data["state_sent"] = len(send.items)
            state.add_sentinels(send, getattr(self.view, "gateway", None))
            tar = send.tar()
            args = state.receive_args(remote, send, state.path_key(self.record.project), profile.state_project_keyed, profile.credential_files)
            script = state.RECEIVE + 'receive_state "$@"; if [ -z "$AH" ]; then echo state-stale; exit 0; fi; echo "$AH"\n'
        argv = self.launch_argv
        if argv:
            tmux = self.terminal.new(argv)
            words = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in sorted(env.items()) if k != "HOME")]
            line = " ".join(shlex.quote(w) for w in words) + ' "HOME=$AH" ' + " ".join(shlex.quote(w) for w in ["/bin/sh", "-c", ssh.WRAPPER, "sh", *tmux])
            script += f'cd "$Wabs"; {line} </dev/null >&2; cd "$H"; echo launched\n'
        return script, args, tar, send

    def _state_key(self, remote_home: str) -> str:
        """Names the host's state home in the local manifest of what was sent."""
        return f"{self.l4.get('user')}@{self.l4.get('host')}:{self.l4.get('port') or 22}/{remote_home}"


    def _command(self, argv: list[str], tty: bool) -> str:
        from ..l4 import ssh

        env = dict(self._data("env"))
        if tty:
            env.setdefault("TERM", os.environ.get("TERM") or "xterm-256color")
        return ssh.remote_command(list(argv), env, self._data("worktree"))

    def exec(self, argv: list[str], tty: bool) -> int:
        """Run `argv` in the session's work tree on the host; stdout and stderr stay apart without a tty."""
        from ..l4 import ssh

        return ssh.run_interactive(self.client(), self._command(argv, tty), tty)

    def launch(self, argv: list[str]) -> None:
        """Start the agent in this session's own tmux server on the host (once: when start() already
        launched this very command, there is nothing to do)."""
        from ..l4 import ssh

        if self.record.data.get("launched") == list(argv):
            return

        command = self._command(self.terminal.new(argv), tty=False)
        code = ssh.run_interactive(self.client(), command, tty=False, forward_stdin=False)
        if code != 0:
            raise InternalError(f"could not start the agent on the L4 host (tmux exited {code})")
        self.record.data["launched"] = list(argv)

    def agent_running(self) -> bool:
        """True while the agent's tmux session exists on the host."""
        from ..l4 import ssh

        code, _, _ = ssh.run_script(self.client(), " ".join(shlex.quote(w) for w in self.terminal.has()) + " 2>/dev/null")
        return code == 0

    def alive(self) -> bool:
        """The host keeps the session: it lives until `stop`."""
        return True

    def stop(self) -> None:
        """Keep the work in the host's bare repo (refs/posture/<id>/work), stop tmux, and hand the
        work tree to the project's spare pool (the next session brings it up to date instead of a
        full checkout) or remove it."""
        from ..l4 import ssh, sync

        if self.gateway is not None or self.record.data.get("gateway_pid"):
            from ..gateway import launch

            launch.stop(self.gateway, self.record.data)
            self.gateway = None
        if "worktree" not in self.record.data and "bare" not in self.record.data:
            self.close()
            return
        try:
            client = self.client()
            if "worktree" in self.record.data:
                try:
                    sync.capture_remote(client, self.record.data["worktree"], self.work_ref, f"posture: work of session {self.record.id} at stop")
                except PostureError:
                    pass  # a broken work tree has nothing to keep; tear down anyway
            ssh.run_script(client, " ".join(shlex.quote(w) for w in self.terminal.kill()) + " 2>/dev/null; true")
            if "worktree" in self.record.data:
                data = self.record.data
                sync.retire_worktree(client, data["bare"], data["worktree"], data.get("tree"), data.get("spare"), self.record.id)
        except PostureError as exc:
            where = self.record.data.get("worktree", "?")
            raise Unavailable(f"could not clean up session {self.record.id} on the L4 host: {exc.message}", fix=f"remove {where} and `tmux -L {self.tmux_socket} kill-server` on the host by hand") from None
        finally:
            self.close()

    # ------------------------------------------------------------ work back

    @property
    def work_ref(self) -> str:
        """The ref, in the host's bare repo, that holds the session's captured work."""
        return f"refs/posture/{self.record.id}/work"

    def pull(self) -> PullResult:
        """Fetch the session's work into refs/posture/<id>/pull-N here; never merge or check out."""
        from .. import audit
        from ..l4 import sync

        project = Path(self.record.project)
        bare = self._data("bare")
        base = self._data("checkpoint_commit")
        client = self.client()
        commit = None
        if "worktree" in self.record.data:
            commit = sync.capture_remote(client, self.record.data["worktree"], self.work_ref, f"posture: work of session {self.record.id}")
        if commit is None:
            commit = sync.remote_ref_exists(client, bare, self.work_ref)
        if commit is None:
            raise UsageError(f"session {self.record.id} left no work on the host", fix="its work tree was removed before anything was captured")
        existing = sync.pull_refs(project, self.record.id)
        if existing and sync.resolve(project, existing[-1]) == commit:
            ref, new = existing[-1], False
        else:
            ref, new = f"refs/posture/{self.record.id}/pull-{len(existing) + 1}", True
            got = sync.fetch(client, project, bare, self.work_ref, ref)
            if got != commit:
                raise InternalError(f"fetched {got} but the host captured {commit}")
        stat = sync.diff_stat(project, base, commit)
        audit.record("l4.pull", session=self.record.id, ref=ref, commit=commit, base=base)
        return PullResult(self.record.id, ref, commit, base, stat, new)

    def checkpoint(self) -> str:
        """The session's work lives on the host: pull it into a local ref and return that ref."""
        return self.pull().ref

    def describe(self) -> dict[str, Any]:
        """Facts for `status`: the public record plus where the work tree is."""
        facts = self.record.public()
        facts["host"] = (self.record.data.get("peer") or {}).get("name")
        facts["worktree"] = self.record.data.get("worktree")
        return facts
