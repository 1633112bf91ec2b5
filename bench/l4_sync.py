#!/usr/bin/env python3
"""Bench: bytes and time of posture's L4 sync for a one-file change in a 20,000-file repository,
side by side with a plain `git push` of the same commit to the same host.

Both run from the test network's GW namespace to the real sshd that stands in for the VPS
(tests/l4/vps.py, at 100.64.0.10 in the HOSTS namespace); nothing touches the root namespace.

Bytes are counted on the wire: rx + tx of every non-loopback interface in the GW namespace
(its /proc/net/dev, i.e. the veth to the host: IP/TCP headers, SSH handshake, everything).
The only traffic in that namespace is the measured command.

    posture sync      = tailscale lookup + pinned paramiko login + git push over that connection (relay)
    + checkout        = the above, plus the per-session work tree checked out on the host (TailnetSession.start)
    git push          = OpenSSH + git push of the same commit, into a bare repo that has the same base

Run as root: python3 bench/l4_sync.py [--files 20000] [--rounds 3]. Target: posture sync <= 1.2x git's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchrepo import git, make_repo  # noqa: E402  (the bench's own directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def wire_bytes() -> int:
    """rx + tx bytes of this network namespace's non-loopback interfaces."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, data = line.split(":", 1)
        if name.strip() != "lo":
            fields = data.split()
            total += int(fields[0]) + int(fields[8])
    return total


def measure(fn) -> tuple[int, float]:
    """(bytes on the wire, seconds) of fn()."""
    b0, t0 = wire_bytes(), time.perf_counter()
    fn()
    return wire_bytes() - b0, time.perf_counter() - t0


def inner(args: argparse.Namespace) -> None:
    """Runs inside the GW namespace: sets up, then measures `rounds` one-file changes."""
    from posture import checkpoint
    from posture.l4.backend import TailnetBackend
    from posture.plugins import load_settings
    from posture.l4 import enroll, hostkeys, ssh, sync, tailscale
    from posture.session import SessionRecord, StartSpec, new_id

    work = Path(args.work)
    repo = work / "repo"
    settings = load_settings(repo)
    l4 = settings.backend["l4"]
    enroll.enroll(settings, yes=True, confirm=None, say=lambda s: None)
    peer = tailscale.find_peer(l4["host"])
    kh = hostkeys.known_hosts_file()
    plain_url = f"ssh://{l4['user']}@{peer.ip}:{l4['port']}/~/{args.workdir}/plain.git"
    openssh = (
        f"ssh -F /dev/null -i {l4['identity']} -o IdentitiesOnly=yes -o IdentityAgent=none -o ForwardAgent=no "
        f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes"
    )
    plain_env = {"GIT_SSH_COMMAND": openssh}
    backend = TailnetBackend()

    def session(ref: str | None) -> object:
        rec = SessionRecord(id=new_id(), project=str(repo), level="l4", backend="tailnet", profile="shell")
        if ref:
            rec.data["checkpoint_ref"] = ref
        return backend.session(rec, settings)

    # Both hosts-side repositories start with the base commit.
    subprocess.run(["runuser", "-u", l4["user"], "--", "git", "init", "-q", "--bare", f"{args.home}/{args.workdir}/plain.git"], check=True)
    git(repo, "push", "-q", plain_url, "HEAD:refs/heads/base", env=plain_env)
    first = session(None)
    first.start(StartSpec())
    first.stop()

    rows = []
    for n in range(args.rounds):
        target = repo / "src0007" / "mod042.py"
        target.write_text(target.read_text() + f"one more line {n}\n")
        t0 = time.perf_counter()
        s = session(None)
        ck = checkpoint.capture(repo, s.record.id)
        capture_s = time.perf_counter() - t0
        s.record.data["checkpoint_ref"] = ck.ref

        def posture_push() -> None:
            p = tailscale.find_peer(l4["host"])
            client = ssh.connect(ssh.target_for(l4, p.ip, p.dns_name))
            try:
                bare = sync.Layout.from_config(l4.get("workdir")).bare(__import__("posture.gitutil", fromlist=["x"]).project_key(repo))
                sync.push(client, repo, ck.commit, ck.ref + "-bench", bare)
            finally:
                client.close()

        pb, pt = measure(posture_push)
        sb, st = measure(s.start)
        s.stop()
        gb, gt = measure(lambda: git(repo, "push", "-q", plain_url, f"{ck.commit}:refs/heads/round{n}", env=plain_env))
        rows.append({"posture_bytes": pb, "posture_s": pt, "start_bytes": sb, "start_s": st, "git_bytes": gb, "git_s": gt, "capture_s": capture_s})
    print(json.dumps(rows))


def outer(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("bench/l4_sync.py needs root (network namespaces, sshd)")
    from l4.vps import STANDIN_BIN, start_vps, stop_vps, write_scenario
    from testnet import testnet

    with tempfile.TemporaryDirectory(prefix="posture-bench-l4-") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        t0 = time.perf_counter()
        make_repo(work / "repo", args.files, ("bench", "bench@localhost"))
        build_s = time.perf_counter() - t0
        with testnet("bl") as net:
            vps = start_vps(net)
            try:
                workdir = "posture-bench"
                cfg = home / ".config" / "posture" / "config.toml"
                cfg.parent.mkdir(parents=True)
                cfg.write_text(f'profile = "shell"\n[l4]\nhost = "vps"\nuser = "{vps.user}"\nport = {vps.port}\nidentity = "{vps.client_key}"\nworkdir = "{workdir}"\n')
                scenario = work / "tailscale.json"
                write_scenario(scenario, vps.tailscale_scenario())
                env = {
                    "HOME": str(home), "PATH": f"{STANDIN_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LANG": "C.UTF-8",
                    "XDG_CONFIG_HOME": str(home / ".config"), "XDG_STATE_HOME": str(home / ".local/state"),
                    "XDG_DATA_HOME": str(home / ".local/share"), "POSTURE_TEST_TAILSCALE_STATE": str(scenario),
                    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                }
                argv = [sys.executable, __file__, "--inner", "--work", str(work), "--workdir", workdir, "--home", str(vps.home), "--rounds", str(args.rounds)]
                proc = subprocess.run(["ip", "netns", "exec", net.gw, *argv], env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"bench failed:\n{proc.stderr}")
                rows = json.loads(proc.stdout.strip().splitlines()[-1])
            finally:
                subprocess.run(["rm", "-rf", str(vps.home / "posture-bench")])
                stop_vps(vps)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    gb, gt = med("git_bytes"), med("git_s")
    print(f"L4 sync of a one-file change in a {args.files}-file repository ({args.rounds} rounds, medians; repo built in {build_s:.1f}s)")
    print("bytes: rx+tx on the GW namespace's veth (/proc/net/dev), headers and handshakes included")
    print(f"{'':34} {'bytes':>10} {'x git':>7} {'seconds':>9} {'x git':>7}")
    print(f"{'git push (OpenSSH)':34} {gb:>10.0f} {1:>7.2f} {gt:>9.3f} {1:>7.2f}")
    print(f"{'posture sync (login + push)':34} {med('posture_bytes'):>10.0f} {med('posture_bytes') / gb:>7.2f} {med('posture_s'):>9.3f} {med('posture_s') / gt:>7.2f}")
    print(f"{'posture start (sync + checkout)':34} {med('start_bytes'):>10.0f} {med('start_bytes') / gb:>7.2f} {med('start_s'):>9.3f} {med('start_s') / gt:>7.2f}")
    print(f"{'checkpoint capture (local only)':34} {'0':>10} {'':>7} {med('capture_s'):>9.3f}")
    target = med("posture_bytes") / gb
    print(f"target posture sync <= 1.2x git's bytes: {'met' if target <= 1.2 else 'NOT met'} ({target:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    main()
