#!/usr/bin/env python3
"""Bench: wall time of an L2 -> L4 escalation of a 20,000-file project with a one-file change,
as a ratio against `git push` of that change to the same host over OpenSSH plus one
`ssh host true` round trip. Target: at most 2x.

The whole ladder as in tests/ladder: `posture netd` (L2's network helper) in the test network's
GW namespace, a real sshd standing in for the L4 host at 100.64.0.10 in the HOSTS namespace
(tests/l4/vps.py), the stand-in `tailscale` CLI; posture runs as root with its own HOME and XDG
dirs in the GW namespace. Nothing touches the root network namespace.

Setup (not timed): the project, `posture l4 enroll`, one earlier L4 session (`posture exec
--level l4 -- true`) so the host already has the base, and a plain bare repository on the host
with the same base for the baseline. Then, per round (interleaved, the order alternating):

    posture   = `posture escalate --session <l2 session> --to l4` after a one-file change
                (a fresh detached L2 session each round; the L4 child is stopped afterwards, untimed)
    baseline  = `git push` of the same change (a commit of the same tree) over OpenSSH
                + `ssh host true` (a new connection: handshake, auth, one command)

Run as root: python3 bench/escalate_l2_l4.py [--files 20000] [--rounds 5] [--profile] [--trigger]
(--profile: one extra escalation under cProfile in every posture process; the top functions
by cumulative time are printed per process.)

--trigger measures a live trigger instead: per round (interleaved), the time from a WebFetch of an
untrusted host reported to the L2 session's report channel (as the agent's hook reports it, with
`on_trigger = "escalate"`) to the first command run in the L4 child, against the same move by hand:
`posture escalate --to l4` and that first command. Target: at most 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchrepo import git, make_repo  # noqa: E402  (the bench's own directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "l2"))

PROFILE_HOOK = r"""
import atexit, cProfile, os, sys
_dir = os.environ.get("POSTURE_BENCH_PROFILE")
if _dir:
    _p = cProfile.Profile()
    _p.enable()
    def _dump():
        _p.disable()
        name = "-".join(os.path.basename(a) for a in sys.argv[:2])
        _p.dump_stats(os.path.join(_dir, f"{os.getpid()}-{name}.prof"))
    atexit.register(_dump)
"""

# --trace: a timeline across processes (CLOCK_MONOTONIC is shared): selected posture functions are
# wrapped as their modules load, and write "time pid name begin|end" lines.
TRACE_HOOK = r"""
import os, sys, time, functools, importlib.abc, importlib.machinery
_out = os.environ.get("POSTURE_BENCH_TRACE")
_T = {
    "posture.cli": ["main"],
    "posture.escalate": ["escalate", "_start_child"],
    "posture.runner": ["plan", "spawn_keeper", "keeper_main", "launch_agent", "down", "_start", "reopen", "open_session"],
    "posture.checkpoint": ["capture"],
    "posture.view": ["build_view"],
    "posture.audit": ["record"],
    "posture.l4.tailscale": ["find_peer"],
    "posture.l4.ssh": ["connect", "_paramiko"],
    "posture.l4.sync": ["push", "checkout", "resolve"],
    "posture.l4.relay": ["Relay._serve_one", "remote_service"],
    "posture.gitutil": ["git"],
    "posture.l4.session": ["TailnetSession.start", "TailnetSession.launch", "TailnetSession.client"],
    "posture.l2.session": ["BwrapSession.stop", "BwrapSession.freeze"],
    "posture.netd.client": ["request"],
    "posture.session": ["SessionStore.update", "SessionStore.save"],
    "posture.policy.trust": ["raise_ratchet"],
}
def _log(name, what):
    with open(_out, "a") as fh:
        fh.write(f"{time.monotonic():.4f} {os.getpid()} {name} {what}\n")
def _wrap(name, fn):
    @functools.wraps(fn)
    def w(*a, **k):
        _log(name, "begin")
        try:
            return fn(*a, **k)
        finally:
            _log(name, "end")
    return w
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _T:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        orig = spec.loader.exec_module
        def exec_module(module, orig=orig, fullname=fullname):
            orig(module)
            for dotted in _T[fullname]:
                obj, _, attr = dotted.rpartition(".")
                holder = getattr(module, obj) if obj else module
                if hasattr(holder, attr):
                    setattr(holder, attr, _wrap(dotted, getattr(holder, attr)))
        spec.loader.exec_module = exec_module
        return spec
if _out:
    _log("interpreter", " ".join(os.path.basename(x) for x in sys.argv[:2]) or "start")
    sys.meta_path.insert(0, _Finder())
"""


def posture_bin() -> str:
    candidate = Path(sys.executable).parent / "posture"
    found = str(candidate) if candidate.exists() else shutil.which("posture")
    if not found:
        sys.exit("the posture console script is not installed next to this python")
    return found


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def inner(args: argparse.Namespace) -> None:
    """Runs inside the GW namespace (nsenter --net: /sys and its cgroup mounts stay the host's)."""
    work = Path(args.work)
    repo = work / "repo"
    env = json.loads(args.env)
    posture = [posture_bin()]
    l4 = json.loads(args.l4)
    kh = Path(env["XDG_STATE_HOME"]) / "posture" / "l4" / "known_hosts"
    openssh = (
        f"ssh -F /dev/null -i {l4['identity']} -o IdentitiesOnly=yes -o IdentityAgent=none -o ForwardAgent=no "
        f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes"
    )
    plain_url = f"ssh://{l4['user']}@{l4['ip']}:{l4['port']}/~/{l4['workdir']}/plain.git"
    ssh_true = [*openssh.split(), "-p", str(l4["port"]), f"{l4['user']}@{l4['ip']}", "true"]
    genv = {**env, "GIT_SSH_COMMAND": openssh}

    run([*posture, "l4", "enroll"], env, repo)
    kh_text = kh.read_text()
    assert kh_text.strip(), "enroll pinned nothing"
    # OpenSSH reads the same pinned known_hosts ([ip]:port entries)
    git(repo, "push", "-q", plain_url, "HEAD:refs/heads/base", env=genv)
    run([*posture, "exec", "--level", "l4", "--", "true"], env, repo)  # the host has the base (and a spare tree)

    if args.trigger:
        print(json.dumps(trigger_rounds(args, posture, env, repo)))
        return
    rows = []
    target = repo / "src0007" / "mod042.py"
    total = args.rounds + (1 if (args.profile or args.trace) else 0)
    for n in range(total):
        profiling = (args.profile or args.trace) and n == total - 1
        # traced: the L2 keeper too (its stop is part of the escalation), but only from the escalation on
        up_env = {**env, "POSTURE_BENCH_TRACE": args.profile_dir + "/trace-l2.txt"} if profiling and args.trace else env
        sid = run([*posture, "up", "--level", "l2", "--detach", "--", "sleep", "100000"], up_env, repo).strip().splitlines()[-1]
        target.write_text(target.read_text() + f"one more line {n}\n")
        # the baseline's commit: the same tree as posture's checkpoint will be (untimed)
        idx = work / "bench-index"
        shutil.copyfile(repo / ".git" / "index", idx)
        ienv = {"GIT_INDEX_FILE": str(idx)}
        git(repo, "add", "-A", ".", env=ienv)
        tree = git(repo, "write-tree", env=ienv)
        commit = git(repo, "commit-tree", tree, "-p", "HEAD", "-m", f"round {n}")
        idx.unlink()

        def baseline() -> None:
            git(repo, "push", "-q", plain_url, f"{commit}:refs/heads/round{n}", env=genv)
            run(ssh_true, genv, repo)

        child: list[str] = []

        def escalate() -> None:
            extra = {}
            if profiling and args.profile:
                extra["POSTURE_BENCH_PROFILE"] = args.profile_dir
            if profiling and args.trace:
                extra["POSTURE_BENCH_TRACE"] = args.profile_dir + "/trace.txt"
            out = run([*posture, "escalate", "--session", sid, "--to", "l4"], {**env, **extra}, repo)
            child.append(out.strip().splitlines()[-1])

        if profiling:
            escalate()
        elif n % 2 == 0:
            p, b = timed(escalate), timed(baseline)
            rows.append({"posture": p, "baseline": b})
        else:
            b, p = timed(baseline), timed(escalate)
            rows.append({"posture": p, "baseline": b})
        run([*posture, "down", "--session", child[0]], env, repo)
        run([*posture, "trust", str(repo)], env, repo)  # lift the ratchet, so the next round starts at L2 without a warning
        data = json.loads((Path(env["XDG_STATE_HOME"]) / "posture" / "sessions" / f"{child[0]}.json").read_text())["data"]
        if rows and not profiling:
            rows[-1]["reused"] = data.get("tree_reused")
    print(json.dumps(rows))


def trigger_rounds(args: argparse.Namespace, posture: list[str], env: dict[str, str], repo: Path) -> list[dict]:
    """Per round: a trigger-driven move to L4 and one by hand, each until the first command runs there."""
    from posture.triggers import channel

    sessions = Path(env["XDG_STATE_HOME"]) / "posture" / "sessions"
    report = {"hook_event_name": "PreToolUse", "tool_name": "WebFetch", "tool_use_id": "toolu_bench",
              "tool_input": {"url": "https://stranger.example/issues/1", "prompt": "read it"}}
    target = repo / "src0007" / "mod042.py"
    rows = []

    def child_of(sid: str) -> str:
        while True:  # the escalator finishes in a process of its own; read its record as it goes
            try:
                rec = json.loads((sessions / f"{sid}.json").read_text())
            except (OSError, ValueError):
                rec = {}
            esc = rec.get("data", {}).get("escalation") or {}
            if rec.get("status") == "escalated" and esc.get("step") == "done":
                return esc["child"]
            if rec.get("status") == "failed" or esc.get("error"):
                raise RuntimeError(f"the triggered escalation failed: {rec.get('note')}")
            time.sleep(0.005)

    for n in range(args.rounds):
        target.write_text(target.read_text() + f"one more line {n}\n")
        sid_t = run([*posture, "up", "--level", "l2", "--detach", "--", "sleep", "100000"], env, repo).strip().splitlines()[-1]
        sock = Path(env["XDG_RUNTIME_DIR"]) / "posture" / sid_t / "report.sock"
        kids: list[str] = []

        def triggered() -> None:
            decision, _ = channel.ask(str(sock), channel.hook_request(report))
            assert decision == "deny"
            kids.append(child_of(sid_t))
            run([*posture, "exec", "--session", kids[-1], "--", "true"], env, repo)

        sid_m: list[str] = []

        def by_hand() -> None:
            out = run([*posture, "escalate", "--session", sid_m[0], "--to", "l4"], env, repo)
            kids.append(out.strip().splitlines()[-1])
            run([*posture, "exec", "--session", kids[-1], "--", "true"], env, repo)

        t = timed(triggered)
        for kid in kids:
            run([*posture, "down", "--session", kid], env, repo)
        run([*posture, "trust", str(repo)], env, repo)
        kids.clear()
        target.write_text(target.read_text() + f"and one more {n}\n")
        sid_m.append(run([*posture, "up", "--level", "l2", "--detach", "--", "sleep", "100000"], env, repo).strip().splitlines()[-1])
        m = timed(by_hand)
        for kid in kids:
            run([*posture, "down", "--session", kid], env, repo)
        run([*posture, "trust", str(repo)], env, repo)
        rows.append({"posture": t, "baseline": m})
    return rows


def outer(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("bench/escalate_l2_l4.py needs root (network namespaces, the network helper, sshd)")
    from l2env import start_netd, stop_netd
    from l4.vps import STANDIN_BIN, start_vps, stop_vps, write_scenario
    from testnet import testnet

    from posture.netd import cgroups

    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="posture-bench-esc-") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        (home / ".gitconfig").write_text("[user]\n\tname = Me\n\temail = me@example.com\n[init]\n\tdefaultBranch = main\n")
        env = {
            "HOME": str(home), "PATH": f"{STANDIN_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_DATA_HOME": str(home / ".local/share"), "XDG_RUNTIME_DIR": str(work / "run"),
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
        }
        (work / "run").mkdir(mode=0o700)
        t0 = time.perf_counter()
        old = {k: os.environ.get(k) for k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM")}
        os.environ.update({"GIT_CONFIG_GLOBAL": env["GIT_CONFIG_GLOBAL"], "GIT_CONFIG_NOSYSTEM": "1"})
        make_repo(work / "repo", args.files)
        build_s = time.perf_counter() - t0
        rundir = Path(f"/run/posture-bench-{tag}")
        rundir.mkdir(mode=0o755)
        base, table = f"posture-bench-{tag}", f"posture_bench_{tag}"
        profile_dir = work / "profiles"
        profile_dir.mkdir()
        if args.profile or args.trace:
            (work / "hook").mkdir()
            (work / "hook" / "sitecustomize.py").write_text(PROFILE_HOOK + TRACE_HOOK)
            env["PYTHONPATH"] = str(work / "hook")
        workdir = f"posture-bench-{tag}"
        try:
            with testnet("be") as net:
                netd_proc = start_netd(net, str(rundir / "netd.sock"), base, table)
                vps = start_vps(net)
                try:
                    cfg = home / ".config" / "posture" / "config.toml"
                    cfg.parent.mkdir(parents=True)
                    cfg.write_text("\n".join([
                        'profile = "shell"', 'identities = ["me@example.com"]',
                        *(["[escalation]", 'on_trigger = "escalate"'] if args.trigger else []),
                        "[l2]", f'netd_socket = "{rundir / "netd.sock"}"',
                        "[l4]", 'host = "vps"', f'user = "{vps.user}"', f"port = {vps.port}",
                        f'identity = "{vps.client_key}"', f'workdir = "{workdir}"', "",
                    ]))
                    scenario = work / "tailscale.json"
                    write_scenario(scenario, vps.tailscale_scenario())
                    env["POSTURE_TEST_TAILSCALE_STATE"] = str(scenario)
                    subprocess.run(["runuser", "-u", vps.user, "--", "git", "init", "-q", "--bare", f"{vps.home}/{workdir}/plain.git"], check=True)
                    l4 = {"user": vps.user, "ip": vps.ip, "port": vps.port, "identity": str(vps.client_key), "workdir": workdir}
                    argv = [sys.executable, __file__, "--inner", "--work", str(work), "--rounds", str(args.rounds),
                            "--env", json.dumps(env), "--l4", json.dumps(l4), "--profile-dir", str(profile_dir)]
                    argv += ["--profile"] * args.profile + ["--trace"] * args.trace + ["--trigger"] * args.trigger
                    proc = subprocess.run(["nsenter", f"--net={net.gw_path}", *argv], env=env, capture_output=True, text=True)
                    if proc.returncode != 0:
                        sys.exit(f"bench failed:\n{proc.stderr[-4000:]}")
                    rows = json.loads(proc.stdout.strip().splitlines()[-1])
                finally:
                    subprocess.run([posture_bin(), "down", "--all"], env=env, capture_output=True)
                    subprocess.run(["rm", "-rf", str(vps.home / workdir)])
                    stop_vps(vps)
                    stop_netd(netd_proc)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(rundir, ignore_errors=True)
            try:
                cgroups.remove(base)
            except OSError:
                pass
        if args.profile:
            report_profiles(profile_dir)
        if args.trace:
            esc = (profile_dir / "trace.txt").read_text().splitlines()
            t0 = float(esc[0].split()[0])
            l2 = [x for x in (profile_dir / "trace-l2.txt").read_text().splitlines() if float(x.split()[0]) >= t0]
            (profile_dir / "trace-all.txt").write_text("\n".join(sorted(esc + l2, key=lambda x: float(x.split()[0]))) + "\n")
            report_trace(profile_dir / "trace-all.txt")
            shutil.copyfile(profile_dir / "trace-all.txt", "/tmp/posture-escalate-trace.txt")
            print("(raw timeline kept in /tmp/posture-escalate-trace.txt)")

    med_p = statistics.median(r["posture"] for r in rows)
    med_b = statistics.median(r["baseline"] for r in rows)
    if args.trigger:
        print(f"L2 -> L4 by a live trigger vs by hand, until the first command runs at L4 ({len(rows)} rounds, medians; {args.files} files)")
        print(f"{'posture escalate --to l4 + first command':52} {med_b:>8.3f} {1:>7.2f}")
        print(f"{'trigger (WebFetch of a stranger) + first command':52} {med_p:>8.3f} {med_p / med_b:>7.2f}")
        print(f"target <= 1.2x: {'met' if med_p / med_b <= 1.2 else 'NOT met'} ({med_p / med_b:.2f}x)")
        return
    print(f"L2 -> L4 escalation of a {args.files}-file project with a one-file change ({len(rows)} rounds, interleaved, medians; project built in {build_s:.1f}s)")
    print(f"{'':52} {'seconds':>8} {'ratio':>7}")
    print(f"{'git push (OpenSSH) + ssh host true':52} {med_b:>8.3f} {1:>7.2f}")
    print(f"{'posture escalate --to l4':52} {med_p:>8.3f} {med_p / med_b:>7.2f}")
    print("rounds (posture s / baseline s / spare tree reused): " + ", ".join(f"{r['posture']:.2f}/{r['baseline']:.2f}/{'y' if r.get('reused') else 'n'}" for r in rows))
    print(f"target <= 2x: {'met' if med_p / med_b <= 2 else 'NOT met'} ({med_p / med_b:.2f}x)")


def report_profiles(directory: Path) -> None:
    """Per posture process: cumulative seconds of posture's own functions (and of imports), largest first."""
    import pstats

    for path in sorted(directory.glob("*.prof")):
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        total = max(ct for (_, _, _, ct, _) in stats.values())
        rows = []
        for (file, _line, fn), (_cc, nc, _tt, ct, _callers) in stats.items():
            if "/posture/" in file and not fn.startswith("<") or fn == "_find_and_load":
                where = "/".join(Path(file).parts[-2:]) if "/posture/" in file else "imports"
                rows.append((ct, nc, f"{where}:{fn}"))
        print(f"\n=== {path.stem}: {total:.3f}s under cProfile; posture functions by cumulative time")
        seen = set()
        for ct, nc, name in sorted(rows, reverse=True):
            if name in seen or ct < 0.02:
                continue
            seen.add(name)
            print(f"  {ct:7.3f}s {nc:5}x  {name}")


def report_trace(path: Path) -> None:
    """The traced escalation as a timeline: seconds since its first event, per process, nested."""
    lines = [line.split(" ", 3) for line in path.read_text().splitlines()]
    t0 = float(lines[0][0])
    depth: dict[str, int] = {}
    pids: dict[str, str] = {}
    print("\n=== timeline of one escalation (s since start; process; function)")
    for t, pid, name, what in lines:
        tag = pids.setdefault(pid, f"p{len(pids) + 1}")
        if name == "interpreter":
            print(f"  {float(t) - t0:7.3f} {tag} python started: {what}")
            continue
        if what == "end":
            depth[pid] = depth.get(pid, 1) - 1
        print(f"  {float(t) - t0:7.3f} {tag} {'  ' * depth.get(pid, 0)}{name} {what}")
        if what == "begin":
            depth[pid] = depth.get(pid, 0) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--trace", action="store_true", help="print a cross-process timeline of one extra escalation")
    ap.add_argument("--trigger", action="store_true", help="a live trigger's move to L4 against the same move by hand")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--env", help=argparse.SUPPRESS)
    ap.add_argument("--l4", help=argparse.SUPPRESS)
    ap.add_argument("--profile-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    main()
