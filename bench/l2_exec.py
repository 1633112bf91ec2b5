#!/usr/bin/env python3
"""Median wall time of `posture exec --level l2 -- true`, side by side with a raw bwrap of
the same view and with Anthropic's sandbox-runtime (`srt -c true`), as ratios.

Run as root (it starts `posture netd` in a network namespace of its own, nothing in the
root namespace); the three commands run as an ordinary user (default: posture-test),
interleaved, so they share the machine's noise.

    bench/l2_exec.py [--runs 20] [--user posture-test] [--baseline /path/to/other/venv/bin/posture]
"""

from __future__ import annotations

import argparse
import json
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

POSTURE = os.environ.get("POSTURE_BIN") or ("/usr/local/bin/posture" if os.access("/usr/local/bin/posture", os.X_OK) else (shutil.which("posture") or "posture"))

# Printed as the user: the bwrap command line posture would use for this project, minus the
# parts only posture needs (seccomp fd, info fd, the agent), running /bin/true instead.
RAW_ARGV = r"""
import json, sys, tempfile
from pathlib import Path
from posture import plugins, profiles, view as viewmod
from posture.l2 import argv as bwrap
project = Path(sys.argv[1])
settings = plugins.load_settings(project)
v = viewmod.build_view(project, profiles.load("shell"), settings, "bench", "l2")
runtime = Path(tempfile.mkdtemp(prefix="posture-bench-"))
fs, wanted = bwrap.view_args(v, runtime)
argv = [bwrap.which("bwrap"), *bwrap.hardening_args("posture"), *fs, "--chdir", str(project), "--", "/bin/true"]
print(json.dumps({"argv": argv, "env": v.env.env, "missing": wanted}))
"""


def timed(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])} ... failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--user", default="posture-test")
    parser.add_argument("--baseline", help="another posture console script (e.g. an older release's venv) to run side by side")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/l2_exec.py: run as root (it starts the network helper in its own network namespace)")
    srt = shutil.which("srt")
    if srt is None:
        raise SystemExit("srt is missing: npm install -g @anthropic-ai/sandbox-runtime (scripts/deps/l2.npm)")
    pw = pwd.getpwnam(args.user)
    tag = uuid.uuid4().hex[:6]
    ns, rundir = f"pbench{tag}", Path(f"/run/posture-bench-{tag}")
    sock, base, table = str(rundir / "netd.sock"), f"posture-bench-{tag}", f"posture_bench_{tag}"
    workdir = Path(tempfile.mkdtemp(prefix="posture-bench-", dir=pw.pw_dir))
    project = workdir / "project"
    netd = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        rundir.mkdir(mode=0o755)
        netd = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "posture.netd", "--socket", sock, "--cgroup", base, "--table", table],
            stdout=subprocess.DEVNULL, stderr=open(rundir / "netd.log", "wb"),
        )
        from posture.netd import client as netd_client

        deadline = time.monotonic() + 15
        while True:
            try:
                if netd_client.request(sock, {"op": "status"}, timeout=2).get("verified"):
                    break
            except (OSError, ValueError, netd_client.NetdError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"posture netd did not come up: {(rundir / 'netd.log').read_text()[-800:]}")
            time.sleep(0.05)
        project.mkdir()
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(workdir)], check=True)
        env = {"HOME": pw.pw_dir, "USER": args.user, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "POSTURE_NETD_SOCKET": sock,
               "XDG_STATE_HOME": str(workdir / "state"), "XDG_CONFIG_HOME": str(workdir / "config")}
        as_user = ["runuser", "-u", args.user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()]]
        venv_python = Path(os.path.realpath(POSTURE)).parent / "python"
        raw = json.loads(subprocess.run([*as_user, str(venv_python), "-c", RAW_ARGV, str(project)], cwd=project,
                                        capture_output=True, text=True, check=True).stdout)
        for path, is_dir in raw["missing"]:  # the raw run gets the same placeholders posture would create
            Path(path).mkdir() if is_dir else Path(path).touch()
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(workdir)], check=True)
        raw_env = ["runuser", "-u", args.user, "--", "env", "-i", *[f"{k}={v}" for k, v in raw["env"].items()]]
        commands = {
            "posture exec --level l2 -- true": [*as_user, POSTURE, "exec", str(project), "--level", "l2", "--profile", "shell", "--", "true"],
            "raw bwrap (same view) true": [*raw_env, *raw["argv"]],
            "srt -c true": [*as_user, srt, "-c", "true"],
        }
        if args.baseline:
            commands["baseline posture exec -- true"] = [*as_user, args.baseline, "exec", str(project), "--level", "l2", "--profile", "shell", "--", "true"]
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.runs + 2):
            for name, argv in commands.items():
                t = timed(argv, str(project))
                if i >= 2:  # two warm-up rounds
                    times[name].append(t)
        med = {name: statistics.median(v) for name, v in times.items()}
        posture_t = med["posture exec --level l2 -- true"]
        print(f"median of {args.runs} runs each, as user {args.user}, on {os.uname().nodename} ({os.cpu_count()} cpus)")
        for name, t in med.items():
            print(f"  {name:34} {1000 * t:7.1f} ms")
        print(f"  posture / raw bwrap = {posture_t / med['raw bwrap (same view) true']:.2f}x")
        print(f"  posture / srt       = {posture_t / med['srt -c true']:.2f}x   (target <= 0.5x)")
        if args.baseline:
            base_t = med["baseline posture exec -- true"]
            print(f"  posture / baseline  = {posture_t / base_t:.2f}x   ({1000 * (posture_t - base_t):+.1f} ms)")
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
