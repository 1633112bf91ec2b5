#!/usr/bin/env python3
"""Added start-up time of the user's toolchains: median wall time of `posture exec --level l2 -- true`
with a PATH of twelve entries (home layouts and a Nix profile, tests/l2/layouts.py) side by side
with today's plain PATH (/usr/local/bin:/usr/bin:/bin), same user, same home, interleaved.

Run as root (it starts `posture netd` in a network namespace of its own, and builds the fake
Nix store at /nix/store, removed afterwards); the commands run as an ordinary user.

    bench/l2_path.py [--runs 20] [--user posture-test]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "l2"))
import layouts  # noqa: E402

POSTURE = os.environ.get("POSTURE_BIN") or ("/usr/local/bin/posture" if os.access("/usr/local/bin/posture", os.X_OK) else (shutil.which("posture") or "posture"))
PLAIN = "/usr/local/bin:/usr/bin:/bin"
LAYOUTS = ("native", "npm", "nvm", "fnm", "cargo", "go", "nix")  # 9 entries + /usr/local/bin:/usr/bin:/bin = 12


# Printed as the user: the median time build_view takes with each PATH, in-process (the part this adds).
VIEW_TIME = r"""
import json, os, statistics, sys, time
from pathlib import Path
from posture import plugins, profiles, view as viewmod
project = Path(sys.argv[1]); settings = plugins.load_settings(project); prof = profiles.load("shell")
out = {}
for name, path in json.loads(sys.argv[2]).items():
    env = {**os.environ, "PATH": path}
    t = []
    for _ in range(60):
        s = time.perf_counter(); viewmod.build_view(project, prof, settings, "bench", "l2", host_env=env); t.append(time.perf_counter() - s)
    out[name] = statistics.median(t[10:])
print(json.dumps(out))
"""


# Printed as the user: the bwrap command line of this view (minus seccomp, info fd, agent), running /bin/true.
RAW_ARGV = r"""
import json, os, sys, tempfile
from pathlib import Path
from posture import plugins, profiles, view as viewmod
from posture.l2 import argv as bwrap
project = Path(sys.argv[1])
v = viewmod.build_view(project, profiles.load("shell"), plugins.load_settings(project), "bench", "l2", host_env={**os.environ, "PATH": sys.argv[2]})
fs, wanted = bwrap.view_args(v, Path(tempfile.mkdtemp(prefix="posture-bench-")))
print(json.dumps({"argv": [bwrap.which("bwrap"), *bwrap.hardening_args("posture"), *fs, "--chdir", str(project), "--", "/bin/true"],
                  "missing": wanted}))
"""


def timed(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-8:])} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")
    return elapsed


def start_netd(ns: str, rundir: Path, sock: str, base: str, table: str) -> subprocess.Popen:
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
    rundir.mkdir(mode=0o755)
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "posture.netd", "--socket", sock, "--cgroup", base, "--table", table],
        stdout=subprocess.DEVNULL, stderr=open(rundir / "netd.log", "wb"),
    )
    from posture.netd import client as netd_client

    deadline = time.monotonic() + 15
    while True:
        try:
            if netd_client.request(sock, {"op": "status"}, timeout=2).get("verified"):
                return proc
        except (OSError, ValueError, netd_client.NetdError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"posture netd did not come up: {(rundir / 'netd.log').read_text()[-800:]}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--user", default="posture-test")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/l2_path.py: run as root (the network helper, the fake Nix store)")
    pw = pwd.getpwnam(args.user)
    tag = uuid.uuid4().hex[:6]
    ns, rundir = f"ppath{tag}", Path(f"/run/posture-bench-{tag}")
    sock, base, table = str(rundir / "netd.sock"), f"posture-bench-{tag}", f"posture_bench_{tag}"
    workdir = Path(tempfile.mkdtemp(prefix="posture-bench-", dir=pw.pw_dir))
    home, project = workdir / "home", workdir / "home" / "project"
    netd, lay = None, None
    try:
        netd = start_netd(ns, rundir, sock, base, table)
        project.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        lay = layouts.build(home, args.user, "BENCH-NOT-A-SECRET", tag, only=LAYOUTS)
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(workdir)], check=True)
        if len(lay.path) != 12:
            raise SystemExit(f"expected a PATH of 12 entries, built {len(lay.path)}: {lay.path_value()}")
        env = {"HOME": str(home), "USER": args.user, "LANG": "C.UTF-8", "POSTURE_NETD_SOCKET": sock,
               "XDG_STATE_HOME": str(workdir / "state"), "XDG_CONFIG_HOME": str(workdir / "config")}

        def argv(path: str) -> list[str]:
            pairs = [f"{k}={v}" for k, v in {**env, "PATH": path}.items()]
            return ["runuser", "-u", args.user, "--", "env", "-i", *pairs, POSTURE, "exec", str(project), "--level", "l2", "--profile", "shell", "--", "true"]

        commands = {"plain PATH (3 entries)": argv(PLAIN), "user PATH (12 entries, Nix profile)": argv(lay.path_value())}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.runs + 2):
            for name, cmd in commands.items():
                t = timed(cmd, str(project))
                if i >= 2:  # two warm-up rounds
                    times[name].append(t)
        med = {name: statistics.median(v) for name, v in times.items()}
        names = list(times)
        plain, user = med["plain PATH (3 entries)"], med["user PATH (12 entries, Nix profile)"]
        print(f"median of {args.runs} runs each, interleaved, as user {args.user}, on {os.uname().nodename} ({os.cpu_count()} cpus)")
        for name, t in med.items():
            q = statistics.quantiles(times[name], n=4)
            print(f"  {name:38} {1000 * t:7.1f} ms  (min {1000 * min(times[name]):.1f}, quartiles {1000 * q[0]:.1f} / {1000 * q[2]:.1f})")
        print(f"  added by the toolchains: {1000 * (user - plain):+.1f} ms at the median, "
              f"{1000 * (min(times[names[1]]) - min(times[names[0]])):+.1f} ms at the minimum   (target <= +10 ms)")
        import json

        venv_python = Path(os.path.realpath(POSTURE)).parent / "python"
        as_user = ["runuser", "-u", args.user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()]]
        paths = dict(zip(commands, (PLAIN, lay.path_value())))
        views = json.loads(subprocess.run([*as_user, str(venv_python), "-c", VIEW_TIME, str(project), json.dumps(paths)], cwd=project,
                                          capture_output=True, text=True, check=True).stdout)
        raw = {name: json.loads(subprocess.run([*as_user, str(venv_python), "-c", RAW_ARGV, str(project), p], cwd=project,
                                               capture_output=True, text=True, check=True).stdout) for name, p in paths.items()}
        for spec in raw.values():  # the raw runs get the placeholders posture would create
            for path, is_dir in spec["missing"]:
                Path(path).mkdir(exist_ok=True) if is_dir else Path(path).touch()
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(project)], check=True)
        raw = {name: spec["argv"] for name, spec in raw.items()}
        raw_times: dict[str, list[float]] = {name: [] for name in raw}
        for i in range(args.runs * 2 + 2):
            for name, cmd in raw.items():
                t = timed([*as_user, *cmd], str(project))
                if i >= 2:
                    raw_times[name].append(t)
        print(f"  raw bwrap of the same view, /bin/true (median of {args.runs * 2}):")
        for name, v in raw_times.items():
            print(f"    {name:36} {1000 * statistics.median(v):7.2f} ms  ({len(raw[name])} arguments)")
        print("  build_view alone (in-process, median of 50):")
        for name, t in views.items():
            print(f"    {name:36} {1000 * t:7.2f} ms")
        return 0
    finally:
        if lay is not None:
            lay.remove()
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
