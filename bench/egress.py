#!/usr/bin/env python3
"""The egress gateway's cost, side by side: a 50 MB download from the public stand-in through the
gateway's proxy (mode allowlist) against the same download made directly (mode public, through
slirp4netns), and the median wall time of `posture exec --level l2 -- true` in allowlist against public.

Run as root: it builds the test network (tests/testnet.py: namespaces only, nothing in the root
namespace), starts `posture netd` there, and runs posture as an ordinary user (default posture-test)
in the GW namespace, interleaving the two modes so they share the machine's noise.

    bench/egress.py [--runs 15] [--downloads 5] [--mb 50] [--user posture-test] [--order abba|alternate]
Targets: download through the gateway >= 0.8x direct; session start in allowlist <= 15 ms more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "l2")]

from l2env import start_netd, stop_netd  # noqa: E402
from support import posture_bin  # noqa: E402
from testnet import PUBLIC, testnet  # noqa: E402

POSTURE = os.environ.get("POSTURE_BIN") or posture_bin()
DL_PORT = 8081

SERVER = r"""
import socket, sys, threading
size = int(sys.argv[2]) * 1024 * 1024
block = b"x" * (1 << 20)
def answer(c):
    try:
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %%d\r\nConnection: close\r\n\r\n" %% size)
        for _ in range(size >> 20):
            c.sendall(block)
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], %d)); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,), daemon=True).start()
""" % DL_PORT

DOWNLOAD = r"""
import socket, sys, time
via, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
if via == "direct":
    s = socket.create_connection((host, port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
else:
    s = socket.create_connection(("127.0.0.1", int(via))); s.sendall(("GET http://%s:%d/ HTTP/1.1\r\nHost: %s\r\n\r\n" % (host, port, host)).encode())
got = 0
buf = bytearray(1 << 20)
while True:
    n = s.recv_into(buf)
    if not n:
        break
    got += n
print("DL %d %.6f" % (got, time.perf_counter() - start))
"""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


class Runner:
    def __init__(self, gw: str, user: str, home: Path, sock: str) -> None:
        self.gw, self.user, self.home, self.sock = gw, user, home, sock

    def posture(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.home), "USER": self.user, "LOGNAME": self.user, "PATH": "/usr/local/bin:/usr/bin:/bin",
               "LANG": "C.UTF-8", "POSTURE_NETD_SOCKET": self.sock}
        argv = ["nsenter", f"--net={self.gw}", "runuser", "-u", self.user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], POSTURE, *args]
        return subprocess.run(argv, capture_output=True, text=True, cwd=str(self.home), timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--downloads", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--user", default="posture-test")
    parser.add_argument("--order", choices=("abba", "alternate"), default="abba",
                        help="session starts: public,allowlist then allowlist,public (abba; each mode follows each equally often) "
                             "or always public then allowlist (alternate)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/egress.py: run as root (it builds the test network and starts the network helper there)")
    pw = pwd.getpwnam(args.user)
    tag = uuid.uuid4().hex[:6]
    rundir = Path(f"/run/posture-bench-{tag}")
    rundir.mkdir(mode=0o755)
    home = Path(tempfile.mkdtemp(prefix="posture-bench-", dir=pw.pw_dir))
    project = home / "project"
    project.mkdir()
    for cmd in (["init", "-q"], ["-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=project, check=True)
    cfg = home / ".config" / "posture" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'[network]\nallow = ["{PUBLIC}/32"]\n')
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(home)], check=True)
    sock = str(rundir / "netd.sock")
    try:
        with testnet("pb") as net, contextlib.ExitStack() as stack:
            server = subprocess.Popen(["ip", "netns", "exec", net.hosts, sys.executable, "-c", SERVER, PUBLIC, str(args.mb)],
                                      stdout=subprocess.PIPE, text=True)
            net.procs.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            netd = start_netd(net, sock, f"posture-bench-{tag}", f"posture_bench_{tag}")
            # stopped inside the `with`: leaving it kills what lives in the namespaces (netd too, by SIGKILL), and a
            # killed helper leaves its cgroups behind, which every later `nft` listing on the machine walks
            stack.callback(stop_netd, netd)
            run = Runner(net.gw_path, args.user, home, sock)
            from posture.gateway import INSIDE_PORT

            rates: dict[str, list[float]] = {"public": [], "allowlist": []}
            for _ in range(args.downloads):
                for mode, via in (("public", "direct"), ("allowlist", str(INSIDE_PORT))):
                    res = run.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--network", mode, "--",
                                      "python3", "-c", DOWNLOAD, via, PUBLIC, str(DL_PORT))
                    line = next((x for x in res.stdout.splitlines() if x.startswith("DL ")), None)
                    if res.returncode != 0 or line is None:
                        raise SystemExit(f"download in {mode} failed ({res.returncode}): {res.stdout[-500:]} {res.stderr[-1500:]}")
                    got, secs = int(line.split()[1]), float(line.split()[2])
                    if got < args.mb << 20:
                        raise SystemExit(f"download in {mode} got {got} bytes")
                    rates[mode].append(got / secs / (1 << 20))
            starts: dict[str, list[float]] = {"public": [], "allowlist": []}
            failures: list[str] = []
            for i in range(args.runs + 2):
                # ABBA by default: a public session leaves work behind in the helper (slirp4netns stops, its
                # cgroup and rules go, a spare launcher is started 0.3 s after each attach), which lands on
                # whatever starts next; in strict alternation that is always an allowlist session
                for mode in (("public", "allowlist") if args.order == "alternate" or i % 2 == 0 else ("allowlist", "public")):
                    for _attempt in range(2):  # bwrap's own loopback set-up fails now and then under load ("RTM_NEWADDR"): counted, retried once
                        t = time.perf_counter()
                        res = run.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--network", mode, "--", "true")
                        elapsed = time.perf_counter() - t
                        if res.returncode == 0:
                            break
                        failures.append(f"{mode}: {res.stderr.strip().splitlines()[-1][:200]}")
                    else:
                        raise SystemExit(f"exec in {mode} failed twice: {res.stderr[-1500:]}")
                    if i >= 2:  # two warm-up rounds
                        starts[mode].append(elapsed)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(rundir, ignore_errors=True)
    med = {m: statistics.median(v) for m, v in rates.items()}
    smed = {m: statistics.median(v) * 1000 for m, v in starts.items()}
    report = {
        "download_mb": args.mb,
        "download_MBps": {"public_direct": round(med["public"], 1), "allowlist_gateway": round(med["allowlist"], 1)},
        "download_ratio": round(med["allowlist"] / med["public"], 2),
        "start_ms": {"public": round(smed["public"], 1), "allowlist": round(smed["allowlist"], 1)},
        "start_extra_ms": round(smed["allowlist"] - smed["public"], 1),
        # each round's allowlist start minus its public one (adjacent in time): steadier than the medians' difference
        # when the machine's load drifts during the run
        "start_extra_ms_paired": round(statistics.median(a - p for a, p in zip(starts["allowlist"], starts["public"])) * 1000, 1),
        "start_order": args.order,
        "start_ms_raw": {m: [round(x * 1000, 1) for x in v] for m, v in starts.items()},
        "start_failures_retried": failures,
        "targets": {"download_ratio": ">= 0.8", "start_extra_ms": "<= 15"},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
