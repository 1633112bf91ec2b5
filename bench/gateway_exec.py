#!/usr/bin/env python3
"""What the gateway costs `posture exec --level l2 -- true`: the claude-code profile with an API key
(a gateway starts, sentinels are bound, the exec agent opens its door) against the same without
any credential (no gateway), and, given `--base POSTURE`, against another posture (before the
gateway: the key passed into the sandbox as it was). Interleaved medians.

Run as root (it starts `posture netd` in a network namespace of its own); the commands run as an
ordinary user (default: posture-test).

    bench/gateway_exec.py [--runs 20] [--user posture-test] [--base /path/to/old/bin/posture]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

POSTURE = os.environ.get("POSTURE_BIN") or str(Path(sys.executable).parent / "posture")
KEY = "sk-ant-api03-" + "b" * 86 + "-benchAA"


def _netd(ns: str, rundir: Path, tag: str) -> tuple[subprocess.Popen, str]:
    sock = str(rundir / "netd.sock")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "posture.netd", "--socket", sock,
                             "--cgroup", f"posture-gwbench-{tag}", "--table", f"posture_gwbench_{tag}"],
                            stdout=subprocess.DEVNULL, stderr=open(rundir / "netd.log", "wb"))
    from posture.netd import client

    deadline = time.monotonic() + 15
    while True:
        try:
            if client.request(sock, {"op": "status"}, timeout=2).get("verified"):
                return proc, sock
        except (OSError, ValueError, client.NetdError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"posture netd did not come up: {(rundir / 'netd.log').read_text()[-800:]}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--user", default="posture-test")
    parser.add_argument("--base", help="another posture console script to compare with (e.g. a build from before the gateway)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/gateway_exec.py: run as root (it starts the network helper in its own network namespace)")
    pw = pwd.getpwnam(args.user)
    tag = uuid.uuid4().hex[:6]
    ns, rundir = f"pgwb{tag}", Path(f"/run/posture-gwbench-{tag}")
    workdir = Path(tempfile.mkdtemp(prefix="posture-gwbench-", dir=pw.pw_dir))
    netd = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        rundir.mkdir(mode=0o755)
        netd, sock = _netd(ns, rundir, tag)
        project = workdir / "project"
        project.mkdir()
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(workdir)], check=True)
        env = {"HOME": str(workdir), "USER": args.user, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "POSTURE_NETD_SOCKET": sock, "XDG_STATE_HOME": str(workdir / "state"), "XDG_CONFIG_HOME": str(workdir / "config")}

        def cmd(posture: str, key: bool) -> list[str]:
            e = {**env, **({"ANTHROPIC_API_KEY": KEY} if key else {})}
            return ["runuser", "-u", args.user, "--", "env", "-i", *[f"{k}={v}" for k, v in e.items()],
                    posture, "exec", str(project), "--level", "l2", "--profile", "claude-code", "--", "true"]

        commands = {"with API key (gateway)": cmd(POSTURE, True), "no credential (no gateway)": cmd(POSTURE, False)}
        if args.base:
            commands["before: with API key"] = cmd(args.base, True)
            commands["before: no credential"] = cmd(args.base, False)
        times: dict[str, list[float]] = {name: [] for name in commands}
        failures: dict[str, int] = {}
        for i in range(args.runs + 2):
            for name, argv in commands.items():
                start = time.perf_counter()
                proc = subprocess.run(argv, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if proc.returncode != 0:  # a loaded shared machine: counted, reported, not timed
                    failures[name] = failures.get(name, 0) + 1
                    print(f"  ({name} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()[-300:]})", file=sys.stderr)
                    continue
                if i >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - start)
        print(f"`posture exec --level l2 --profile claude-code -- true`, median of {args.runs} interleaved runs, as {args.user}, {os.cpu_count()} cpus")
        for name, values in times.items():
            note = f"   ({failures[name]} failed runs not counted)" if failures.get(name) else ""
            print(f"  {name:30} {1000 * statistics.median(values):7.1f} ms{note}")
        return 0
    finally:
        if netd is not None and netd.poll() is None:
            netd.send_signal(signal.SIGTERM)
            try:
                netd.wait(timeout=15)
            except subprocess.TimeoutExpired:
                netd.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
