"""The view: everything an agent may see, as one description that every local level realises.

L2 realises it with bubblewrap binds, L3 stages it for virtio-fs. Nothing outside the
allowlist exists inside: host paths not listed here are simply absent.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import envpolicy, gitutil, netpolicy, paths, toolchains
from .config import Settings
from .envpolicy import EnvDecision
from .errors import UsageError
from .netpolicy import NetworkPolicy
from .profiles import Profile

if TYPE_CHECKING:
    from .gateway.broker import Brokered

# Host directories bound read-only at the same place (those that exist; symlinks are kept as symlinks).
SYSTEM_RO: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The parts of /etc that programs need for TLS, DNS, users, locales and the dynamic linker.
ETC_RO: tuple[str, ...] = (
    "/etc/ssl", "/etc/ca-certificates", "/etc/ca-certificates.conf", "/etc/pki", "/etc/crypto-policies",
    "/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/gai.conf",
    "/etc/protocols", "/etc/services", "/etc/localtime", "/etc/timezone", "/etc/locale.alias",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
    "/etc/os-release", "/etc/debian_version", "/etc/lsb-release", "/etc/mime.types",
    "/etc/terminfo", "/etc/inputrc", "/etc/bash.bashrc", "/etc/profile", "/etc/profile.d",
    "/etc/skel", "/etc/gitconfig", "/etc/vim", "/etc/python3", "/etc/python3.11", "/etc/magic",
)
# Inside the read-write project, read-only for the agent, existing or not: the host runs or loads them later.
PROTECTED_DEFAULT: tuple[str, ...] = (
    ".git/hooks", ".git/config", ".git/info", ".gitmodules", ".envrc", ".vscode", ".idea",
    ".mcp.json", ".cursor", ".claude/settings.json", ".claude/settings.local.json", ".posture.toml",
)


@dataclass(frozen=True)
class Bind:
    """A host path shown inside at `target`."""

    source: str
    target: str
    writable: bool = False


@dataclass
class View:
    """What one session's agent may see and use."""

    session: str
    level: str
    project: str  # host path; shown at the same path, read-write
    home: str  # the home inside: an empty private directory plus `binds`
    user: str
    uid: int
    gid: int
    system_ro: list[str] = field(default_factory=list)
    binds: list[Bind] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # target -> generated content (passwd, group)
    protected: list[str] = field(default_factory=list)  # absolute paths inside the project, read-only
    denied: list[str] = field(default_factory=list)  # absolute paths inside the project, hidden
    env: EnvDecision = field(default_factory=EnvDecision)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    cwd: str = ""
    state_dir: str = ""  # this project's agent state on the host (never inside another project's view)
    # The agent's own credentials, brokered by the session's gateway (posture.gateway.broker.Brokered):
    # inside only their sentinels.
    gateway: Brokered | None = None
    toolchains: toolchains.Toolchains = field(default_factory=toolchains.Toolchains)  # PATH trees, links, masks

    def host_paths(self) -> list[str]:
        """Every host path this view exposes (for audits and tests)."""
        return [*self.system_ro, self.project, *(b.source for b in self.binds)]


def proxy_env() -> dict[str, str]:
    """The proxy variables of a session whose only way out is the gateway (its forwarder on the sandbox's own loopback)."""
    from .gateway import INSIDE_PORT

    url = f"http://127.0.0.1:{INSIDE_PORT}"
    no_proxy = "localhost,127.0.0.1,::1"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url, "NO_PROXY": no_proxy, "no_proxy": no_proxy}


def api_hosts(profile: Profile) -> list[str]:
    """The profile's API hosts (its credentials' hosts: reachable through the gateway in every mode)."""
    return list(profile.credential_hosts)


def agent_state_dir(project: Path, profile: Profile) -> Path:
    """Per-project, per-profile agent state on the host, keyed by the git common dir."""
    return paths.state_dir() / "projects" / gitutil.project_key(project) / profile.name


def _seed_state(state_home: Path, profile: Profile) -> None:
    for rel in profile.state_dirs:
        (state_home / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel in profile.state_files:
        target = state_home / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not target.exists():
            target.write_text("{}\n" if target.suffix == ".json" else "")
            target.chmod(0o600)


def _check_mount(path: str) -> None:
    real = os.path.realpath(path)
    for owned in paths.posture_owned_dirs():
        owned_real = os.path.realpath(owned)
        if owned_real == real or owned_real.startswith(real.rstrip("/") + "/") or real.startswith(owned_real + "/"):
            raise UsageError(
                f"[mounts] {path} would expose posture's own state ({owned}) inside the sandbox",
                fix="mount a narrower directory",
            )


def _generated_identity(user: str, uid: int, gid: int, home: str) -> dict[str, str]:
    passwd = f"root:x:0:0:root:/root:/bin/bash\n{user}:x:{uid}:{gid}:{user}:{home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    group = f"root:x:0:\n{user}:x:{gid}:\nnogroup:x:65534:\n"
    if uid == 0:
        passwd = f"root:x:0:0:root:{home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        group = "root:x:0:\nnogroup:x:65534:\n"
    return {"/etc/passwd": passwd, "/etc/group": group}


def build_view(
    project: Path,
    profile: Profile,
    settings: Settings,
    session: str,
    level: str,
    host_env: dict[str, str] | None = None,
    network: str | None = None,
    credentials: bool = True,
) -> View:
    """Describe what the agent of `session` sees: the allowlist, the env, the network policy
    (`network`: the session's --network, else the config's mode; a repo file only tightens it).
    `credentials` False: no credential is fetched or brokered (a view only checked, never started)."""
    project = project.resolve()
    home = str(paths.home_dir())
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "user"
    state_home = agent_state_dir(project, profile) / "home"
    _seed_state(state_home, profile)

    binds: list[Bind] = []
    for rel in [*profile.state_dirs, *profile.state_files]:
        binds.append(Bind(str(state_home / rel), f"{home}/{rel}", writable=True))
    from .gateway import broker as gateway_broker

    source_env = dict(os.environ if host_env is None else host_env)
    brokered = (gateway_broker.prepare(profile, source_env, Path(home), session, level, user=settings.credentials)  # the agent's credentials: sentinels only
                if credentials else gateway_broker.Brokered(base_url_env=profile.base_url_env))
    for rel, sentinel_file in brokered.paths.items():
        binds.append(Bind(sentinel_file, f"{home}/{rel}", writable=False))
    for path in settings.mounts_ro:
        _check_mount(path)
        binds.append(Bind(path, path, writable=False))
    for path in settings.mounts_rw:
        _check_mount(path)
        binds.append(Bind(path, path, writable=True))

    relative = list(dict.fromkeys([*PROTECTED_DEFAULT, *profile.protect]))
    if (project / ".git").is_file():
        # A worktree: `.git` is a pointer file (re-pointing it would hand the host other hooks);
        # the real git dirs are protected below.
        relative = [".git", *(r for r in relative if not r.startswith(".git/"))]
    protected = [str(project / rel) for rel in relative]
    git_dir = gitutil.git_dir(project)
    common = gitutil.common_dir(project)
    if git_dir and git_dir != project / ".git":
        # A worktree or separate git dir: the agent must still commit (objects, refs, index are
        # writable), but the real hooks and config are protected like the project's own.
        for base in [d for d in {git_dir, common} if d is not None]:
            if not str(base).startswith(str(project) + "/"):
                binds.append(Bind(str(base), str(base), writable=True))
            protected += [str(base / "hooks"), str(base / "config"), str(base / "info")]
    denied = [str(project / rel) for rel in settings.deny_paths]
    system = [p for p in (*SYSTEM_RO, *ETC_RO) if os.path.lexists(p)]
    tools = toolchains.for_settings(settings, source_env, home, system)
    binds += [Bind(t.path, t.path, writable=False) for t in tools.trees if not t.path.startswith(str(project) + "/")]

    fixed = {
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "PATH": envpolicy.inside_path(tools.path),
        "POSTURE_LEVEL": level,
        "POSTURE_SESSION": session,
        **brokered.env,
    }
    mode = netpolicy.effective_mode(settings.user_network_mode, settings.repo_network_mode, network)
    if mode != "public":
        fixed.update(proxy_env())
    env = envpolicy.build_env(
        source_env,
        allow=[*profile.env_pass, *profile.env_secrets, *settings.env_pass],
        drop=settings.env_drop,
        fixed=fixed,
    )
    return View(
        session=session,
        level=level,
        project=str(project),
        home=home,
        user=user,
        uid=uid,
        gid=gid,
        system_ro=system,
        binds=binds,
        files=_generated_identity(user, uid, gid, home),
        protected=protected,
        denied=denied,
        env=env,
        network=netpolicy.policy_for(settings.network_block, mode, settings.network_allow, api_hosts(profile)),
        cwd=str(project),
        state_dir=str(agent_state_dir(project, profile)),
        gateway=brokered,
        toolchains=tools,
    )
