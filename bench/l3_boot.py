#!/usr/bin/env python3
"""Boot-to-first-command of `posture exec --level l3 -- echo MARK`, side by side with a bare
`qemu-system-x86_64 -kernel ... -initrd ...` direct boot of the same kernel whose trivial init
prints a marker (the floor), with the same accelerator, as a ratio of medians.

Both are timed from process start until the marker reaches our stdout; posture's total
wall time (including the VM's teardown) is printed too. Both run as `--user` (default
the ordinary user posture-test, in the libvirt and kvm groups: QEMU and virtiofsd then run
as that user; `--user root` measures root's path), with the accelerator that user gets.
Start it as root: it brings up the test network, `posture netd` and a private libvirtd in
a network namespace of its own (nothing in the root namespace), exactly like tests/l3.

    bench/l3_boot.py [--runs 5] [--user posture-test|root] [--baseline OTHER_POSTURE]

--baseline names a second posture (another build, as an executable) that runs in turn with this one and
the floor, so a change to the boot is measured side by side, not against yesterday's figures.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "tests", ROOT / "tests" / "l3", ROOT / "tests" / "l2"):
    sys.path.insert(0, str(p))

POSTURE = os.environ.get("POSTURE_BIN") or ("/usr/local/bin/posture" if os.access("/usr/local/bin/posture", os.X_OK) else (shutil.which("posture") or "posture"))
MARK = "posture-bench-mark"


def until_marker(argv: list[str], marker: str, env: dict[str, str] | None = None, cwd: str | None = None,
                 timeout: float = 300, show_stderr: bool = False, on_marker=None) -> tuple[float, float]:
    """(seconds until `marker` appears on stdout, seconds until the process exits)."""
    start, wall0 = time.perf_counter(), time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen, buf = None, b""
    deadline = start + timeout
    while seen is None and time.perf_counter() < deadline:
        if not sel.select(timeout=1):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        if marker.encode() in buf:
            seen = time.perf_counter() - start
            if on_marker is not None:
                on_marker()
    out, err = proc.communicate(timeout=timeout)
    total = time.perf_counter() - start
    if show_stderr:
        print(f"  marker at {seen}, exit at {total:.3f}", file=sys.stderr)
        for line in err.decode(errors="replace").splitlines():  # posture's `[l3 T @EPOCH] what`: EPOCH as seconds since our start
            m = re.match(r"\[l3 [0-9.]+ @([0-9.]+)\] (.*)", line)
            print(f"  +{float(m.group(1)) - wall0:6.3f} {m.group(2)}" if m else "  " + line, file=sys.stderr)
    if seen is None:
        raise SystemExit(f"{argv[0]}: no marker ({proc.returncode}): {(buf + out).decode(errors='replace')[-400:]} {err.decode(errors='replace')[-800:]}")
    return seen, total


def tail_console(runtime: Path, out: list[str], stop: threading.Event, wall0: float) -> None:
    """Poll the live VM's console (libvirt takes the file back at destroy) and note when each `posture-t:` line
    appears, in seconds since `wall0`, next to the guest's own uptime: their difference is when the kernel started."""
    seen: set[str] = set()
    while True:
        done = stop.is_set()
        for log in runtime.glob("posture/l3/*/console.log"):
            try:
                text = log.read_text(errors="replace")
            except OSError:
                continue
            now = time.time() - wall0
            for line in text.splitlines():
                line = line.strip()
                if ("posture-t:" in line or "posture-init" in line or "SeaBIOS" in line or "Booting" in line) and line not in seen:
                    seen.add(line)
                    m = re.search(r"posture-t: \S+ ([0-9.]+)", line)
                    out.append(f"{line}  (host +{now:.3f}{f'; kernel started at +{now - float(m.group(1)):.3f}' if m else ''})")
        if done:
            return
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=0, help="[l3] cpus for posture's VM (default: posture's default)")
    parser.add_argument("--tcg-cpu", choices=("max", "qemu64"), default="max", help="[l3] tcg_cpu for posture's VM (default max, posture's default)")
    parser.add_argument("--user", default="posture-test", help="who runs posture and the floor (default posture-test; root for root's path)")
    parser.add_argument("--baseline", default="", help="another posture executable to time in turn with this one (a build to compare against)")
    parser.add_argument("--timeline", action="store_true",
                        help="print posture's host-side timestamps (POSTURE_DEBUG_TIMING) and the guest's posture-t: lines of each run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/l3_boot.py: run as root")

    from l2env import start_netd, stop_netd
    from privlibvirtd import private_libvirtd

    from posture.l3 import accel, initramfs, kernel
    from posture.netd import cgroups
    from testnet import testnet

    k = kernel.find_kernel({})
    pw = pwd.getpwnam(args.user)
    as_user = [] if pw.pw_uid == 0 else ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    if as_user:  # the accelerator the user gets: KVM only if the user can open /dev/kvm (and it boots)
        probe = subprocess.run([*as_user, "test", "-r", "/dev/kvm", "-a", "-w", "/dev/kvm"])
        acc, why = (accel.choose(k) if probe.returncode == 0 else ("tcg", f"/dev/kvm is not usable by {args.user}"))
    else:
        acc, why = accel.choose(k)
    work = Path(tempfile.mkdtemp(prefix="posture-l3-bench-"))
    os.chmod(work, 0o755)
    floor_initrd = initramfs.cached(work, k.modules, kernel.find_busybox(),
                                    initramfs.TRIVIAL_INIT.replace("posture-probe-ok", MARK), ())
    floor_argv = [*as_user, *accel.boot_argv(k, floor_initrd, acc)]

    project = work / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    home = work / "home"
    home.mkdir()
    subprocess.run(["git", "-C", str(project), "config", "user.name", "bench"], check=True)
    tag = uuid.uuid4().hex[:6]
    base, table = f"posture-l3bench-{tag}", f"posture_l3bench_{tag}"
    rundir = Path(f"/run/posture-l3-bench-{tag}")
    rundir.mkdir(mode=0o755)
    floor: list[float] = []
    first: list[float] = []
    total: list[float] = []
    base_first: list[float] = []
    base_total: list[float] = []
    try:
        with testnet() as net:
            netd_proc = start_netd(net, str(rundir / "netd.sock"), base, table)
            try:
                with private_libvirtd(net.gw, work / "libvirtd") as uri:
                    cfg = work / "xdg" / "config" / "posture"
                    cfg.mkdir(parents=True)
                    cpus = f"cpus = {args.cpus}\n" if args.cpus else ""
                    (cfg / "config.toml").write_text(f'[l3]\nuri = "{uri}"\naccel = "{acc}"\ntcg_cpu = "{args.tcg_cpu}"\n{cpus}')
                    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(project), str(home), str(work / "xdg")], check=True)
                    env = {
                        "HOME": str(home), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                        "XDG_CONFIG_HOME": str(work / "xdg" / "config"), "XDG_STATE_HOME": str(work / "xdg" / "state"),
                        "XDG_DATA_HOME": str(work / "xdg" / "data"), "USER": args.user, "LOGNAME": args.user,
                        "POSTURE_NETD_SOCKET": str(rundir / "netd.sock"),
                    }
                    runtime = work / "xdg" / "runtime"
                    if args.timeline:
                        runtime.mkdir(mode=0o700)
                        os.chown(runtime, pw.pw_uid, pw.pw_gid)
                        env.update({"POSTURE_DEBUG_TIMING": "1", "XDG_RUNTIME_DIR": str(runtime)})
                    def argv_of(binary: str) -> list[str]:
                        return [*as_user, "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                                binary, "exec", str(project), "--level", "l3", "--profile", "shell", "--", "echo", MARK]
                    posture_argv = argv_of(POSTURE)
                    until_marker(posture_argv, MARK, cwd=str(project))  # warm caches (initramfs, agent, libvirt)
                    if args.baseline:
                        until_marker(argv_of(args.baseline), MARK, cwd=str(project))
                    for _ in range(args.runs):
                        floor.append(until_marker(floor_argv, MARK)[0])
                        if args.baseline:
                            seen, whole = until_marker(argv_of(args.baseline), MARK, cwd=str(project))
                            base_first.append(seen)
                            base_total.append(whole)
                        console: list[str] = []
                        stop_tail = threading.Event()
                        tail = threading.Thread(target=tail_console, args=(runtime, console, stop_tail, time.time()), daemon=True)
                        if args.timeline:
                            tail.start()
                        seen, whole = until_marker(posture_argv, MARK, cwd=str(project), show_stderr=args.timeline,
                                                   on_marker=stop_tail.set)
                        if args.timeline:
                            tail.join()
                        for line in console:
                            print("  guest " + line, file=sys.stderr)
                        first.append(seen)
                        total.append(whole)
            finally:
                stop_netd(netd_proc)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        try:
            cgroups.remove(base)
        except OSError:
            pass
    f, p, t = statistics.median(floor), statistics.median(first), statistics.median(total)
    print(f"accelerator: {acc} ({why})")
    print(f"as: {args.user}; kernel: {k.image}; posture's VM: {args.cpus or 'default'} vCPUs ({args.tcg_cpu} under TCG), the floor's: 1 (qemu64)")
    print(f"{'':34}{'median':>9}{'min':>9}{'max':>9}   (s, {args.runs} runs)")
    print(f"{'bare qemu -kernel/-initrd (floor)':34}{f:9.2f}{min(floor):9.2f}{max(floor):9.2f}")
    print(f"{'posture exec --level l3 (1st cmd)':34}{p:9.2f}{min(first):9.2f}{max(first):9.2f}")
    print(f"{'posture exec --level l3 (total)':34}{t:9.2f}{min(total):9.2f}{max(total):9.2f}")
    if base_first:
        b, bt = statistics.median(base_first), statistics.median(base_total)
        print(f"{'baseline (1st cmd)':34}{b:9.2f}{min(base_first):9.2f}{max(base_first):9.2f}   ({args.baseline})")
        print(f"{'baseline (total)':34}{bt:9.2f}{min(base_total):9.2f}{max(base_total):9.2f}")
        print(f"this build against the baseline: {p / b:.2f}x to the first command ({p - b:+.2f} s)")
    print(f"ratio boot-to-first-command / floor: {p / f:.2f}x (target <= 1.2x)")
    paired = sorted(a / b for a, b in zip(first, floor))  # each run against the floor run right before it
    print(f"run by run against the floor before it: median {statistics.median(paired):.2f}x (from {paired[0]:.2f}x to {paired[-1]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
