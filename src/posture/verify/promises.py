"""From a probe's report to one row per promise: held (True), broken (False) or untested (None), with evidence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .targets import Targets

DENIED = ("EPERM", "EACCES")
TIOCSTI_REFUSED = (*DENIED, "EIO")  # EIO: the kernel's dev.tty.legacy_tiocsti=0 refuses it too
READ_ONLY = ("EROFS", "EACCES", "EPERM", "EBUSY")

CREDS = "credential files absent"
ENV = "no secret in the environment"
PROTECTED = "protected paths refused"
STATE = "other projects' state invisible"
INTERNAL = "internal ranges unreachable"
LOOPBACK = "host loopback unreachable"
PUBLIC = "public internet reachable"
TIOCSTI = "TIOCSTI refused"
USERNS = "nested user namespaces refused"
KERNEL = "kernel interfaces refused"
PEERS = "other tailnet peers closed to the L4 host"
AGENT = "agent's own credential absent"
NETWORK = (INTERNAL, LOOPBACK)

# What each level promises (the guest's own kernel at L3, the host's at L4: no kernel promises there).
LEVEL_PROMISES: dict[str, tuple[str, ...]] = {
    "l2": (CREDS, ENV, AGENT, PROTECTED, STATE, INTERNAL, LOOPBACK, PUBLIC, TIOCSTI, USERNS, KERNEL),
    "l3": (CREDS, ENV, AGENT, PROTECTED, STATE, INTERNAL, LOOPBACK, PUBLIC),
    "l4": (CREDS, ENV, AGENT, STATE, PUBLIC, PEERS),
}


@dataclass
class Row:
    """One line of `posture verify`: the documented JSON shape."""

    level: str
    promise: str
    held: bool | None
    evidence: str

    def to_json(self) -> dict[str, Any]:
        """{"level", "promise", "held", "evidence"}."""
        return asdict(self)


@dataclass
class Context:
    """What the run knows besides the report: the needles, the targets, host-side observations."""

    cred: str
    state: str
    cred_file: str
    targets: Targets
    peers: list[str]  # tailnet peer addr:port tried from the L4 host
    project_visible: bool | None  # the probe's project write seen on the host (None: not checkable)
    agent: str = ""  # the fake agent credential planted outside ("" when the profile has none)
    agent_var: str = ""


def _short(items: list[str], n: int = 4) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


DENIED = ("EACCES", "EPERM")  # what the session may not read, it cannot leak either


def incomplete(r: dict[str, Any]) -> str:
    """Why the probe's walk for the canaries did not cover the view ("" when it did)."""
    failed = {name: e for name, e in r.get("scan_errors", {}).items() if name not in DENIED}
    return "; ".join(f"{name} at {e['count']} paths (first {e['first'][0]})" for name, e in sorted(failed.items()))


def _unscanned(r: dict[str, Any]) -> tuple[None, str] | None:
    why = incomplete(r)
    return (None, f"the walk for the planted canaries could not finish: {why}") if why else None


def creds(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    present = [p for p, res in r.get("creds", {}).items() if res != "ENOENT"]
    hits = r.get("canaries_found", {}).get(c.cred, [])
    if present or hits:
        return False, "visible inside: " + _short([f"{p} ({r['creds'][p]})" for p in present] + [f"planted key found at {h}" for h in hits])
    if (unscanned := _unscanned(r)) is not None:
        return unscanned
    return True, f"{len(r.get('creds', {}))} credential paths absent (ENOENT); the key planted at {c.cred_file} is found nowhere inside"


def env(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    hits = r.get("env_hits", [])
    if hits:
        return False, "the planted secret is readable inside: " + _short(hits)
    return True, "the secret planted in the launching environment is in no variable and no /proc/*/environ inside"


def agent(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    if not c.agent:
        return None, "the profile names no API credential variable for its agent"
    hits = [*r.get("agent_env_hits", []), *r.get("canaries_found", {}).get(c.agent, [])]
    if hits:
        return False, f"the agent's own {c.agent_var} (planted outside) is readable inside: " + _short(hits)
    if (unscanned := _unscanned(r)) is not None:
        return unscanned
    inside = r.get("agent_var_inside", "absent")
    how = {"same shape": "a sentinel of the same shape, swapped by the session's gateway outside",
           "absent": "nothing (this level has no door to the gateway)", "other": "a value of another shape"}[inside]
    return True, f"the {c.agent_var} planted outside is in no variable, file or /proc/*/environ inside; inside it is {how}"


def protected(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    writes = r.get("protected_writes", {})
    if r.get("project_write") != "ok" or c.project_visible is False:
        why = r.get("project_write") if r.get("project_write") != "ok" else "written inside but not seen on the host"
        return None, f"the control failed: the project itself could not be written ({why}), so refusals prove nothing"
    open_ = [f"{rel} ({res})" for rel, res in writes.items() if res not in READ_ONLY]
    if open_:
        return False, "writable inside: " + _short(open_)
    if not writes:
        return None, "no protected path to try"
    kinds = sorted(set(writes.values()))
    return True, f"{len(writes)} protected paths refused writes ({'/'.join(kinds)}); control: a file in the project was written"


def state(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    hits = r.get("canaries_found", {}).get(c.state, [])
    if hits:
        return False, "another project's agent state is visible: " + _short(hits)
    if (unscanned := _unscanned(r)) is not None:
        return unscanned
    listed = r.get("agent_state")
    return True, "a planted conversation of another project is found nowhere inside" + (f" (~/.claude/projects inside: {len(listed)} entries)" if listed else "")


def _net(kind: str, r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    targets = c.targets.of(kind)
    if not targets:
        return None, c.targets.notes.get(kind, f"no {kind} target")
    net = r.get("net", {})
    results = [(t, net.get(t.key, "not tried")) for t in targets]
    reached = [f"{t.key} ({res})" for t, res in results if res.startswith("ok")]
    source = f"given in {'POSTURE_VERIFY_TARGETS'}" if kind in c.targets.given else "each answers from the host"
    if kind == "public":
        if reached:
            return True, f"reached {_short(reached)} ({source})"
        return False, "no public target answered inside: " + _short([f"{t.key} ({res})" for t, res in results]) + f" ({source})"
    if reached:
        return False, "reached from inside: " + _short(reached)
    return True, "refused inside: " + _short([f"{t.key} {res}" for t, res in results]) + f" ({source})"


def tiocsti(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    own = r.get("tiocsti_own_pty", {})
    if own.get("open") != "ok" or own.get("control") != "ok":
        return None, f"could not open a terminal inside to try it on ({own})"
    tried = {f"own pty {k}": v for k, v in own.items() if k not in ("open", "control")}
    for where, results in r.get("tiocsti", {}).items():
        tried.update({f"fd {where} {k}": v for k, v in results.items()})
    allowed = [f"{k} ({v})" for k, v in tried.items() if v not in TIOCSTI_REFUSED]
    if allowed:
        return False, "accepted inside: " + _short(allowed)
    return True, f"TIOCSTI/TIOCLINUX refused on a terminal opened inside ({', '.join(sorted(set(tried.values())))}); control: TIOCGWINSZ works on it"


def userns(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    u = r.get("userns", {})
    ok = u.get("unshare") in DENIED and u.get("unshare_raw") in DENIED and u.get("clone3") in ("ENOSYS", *DENIED) and u.get("unshare_cmd") != 0
    evidence = f"unshare(CLONE_NEWUSER) {u.get('unshare')}, raw {u.get('unshare_raw')}, clone3 {u.get('clone3')}, `unshare -U` exit {u.get('unshare_cmd')}"
    return (True, "refused: " + evidence) if ok else (False, "not refused: " + evidence)


def kernel(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    calls = ("keyctl", "add_key", "ptrace", "process_vm_readv", "fsopen", "open_tree", "mount_setattr")
    got = {k: r.get(k) for k in calls}
    allowed = [f"{k} ({v})" for k, v in got.items() if v not in DENIED]
    if allowed:
        return False, "not refused: " + _short(allowed, 7)
    return True, "keyctl, add_key, ptrace, process_vm_readv and the mount API refused (" + "/".join(sorted({str(v) for v in got.values()})) + ")"


def peers(r: dict[str, Any], c: Context) -> tuple[bool | None, str]:
    if not c.peers:
        return None, "no other tailnet peer to try (from `tailscale status --json`)"
    net = r.get("net", {})
    answered = [k for k in c.peers if net.get(k, "").startswith("ok")]
    if answered:
        return None, ("WARNING: from the L4 host these answer: " + _short(answered, 8)
                      + " (the tailnet's ACLs decide this, not posture: restrict the L4 host in them)")
    return None, f"none of {len(c.peers)} peer ports answered from the L4 host (the tailnet's ACLs decide this, not posture)"


CHECKS: dict[str, Callable[[dict[str, Any], Context], tuple[bool | None, str]]] = {
    CREDS: creds, ENV: env, AGENT: agent, PROTECTED: protected, STATE: state,
    INTERNAL: lambda r, c: _net("internal", r, c), LOOPBACK: lambda r, c: _net("loopback", r, c), PUBLIC: lambda r, c: _net("public", r, c),
    TIOCSTI: tiocsti, USERNS: userns, KERNEL: kernel, PEERS: peers,
}


def rows_for(level: str, report: dict[str, Any], ctx: Context) -> list[Row]:
    """One row per promise of `level`, judged from the probe's report."""
    return [Row(level, name, *CHECKS[name](report, ctx)) for name in LEVEL_PROMISES[level]]


SESSION = "session"  # the row of a level whose session could not run


def not_run(level: str, why: str) -> list[Row]:
    """The one row of a level that could not run here, with why."""
    return [Row(level, SESSION, None, why)]


def network_refused(level: str, detail: str) -> list[Row]:
    """The network rule is not in force: sessions are refused (fail closed), and the user must know."""
    why = (f"the network helper's rule is not in force ({detail}): {level} sessions are refused (fail closed), "
           "so no session can run until root runs `posture setup`")
    return [Row(level, name, False if name in NETWORK else None, why if name in NETWORK else "not tried: no session could start (see the network rows)")
            for name in LEVEL_PROMISES[level]]
