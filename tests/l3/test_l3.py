"""L3 through the real console script: a VM per session, probed from inside.

The probe is the shipped one (posture/verify/probe.py, which `posture verify` runs too), run inside the
guest of the ordinary user posture-test: as the user (pipes) and as guest root (pty, `[l3] guest_root = true`). The guest
has its own kernel, so the in-kernel checks L2 makes (user namespaces, keyctl, ptrace,
TIOCSTI on the user's terminal) are about the guest's kernel here and are not promises
of L3; the table below says what L3 promises for each probe key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from l3env import CREDS, GW_LOOPBACK_PORT, L3, POSTURE, probe_report, wait_for
from testnet import INTERNAL, INTERNAL6, PORT, PUBLIC, PUBLIC6

from posture.verify import PROBE  # the shipped probe: the one `posture verify` runs

pytestmark = [pytest.mark.root, pytest.mark.l3]

PROTECTED = [".git/hooks/pre-commit", ".envrc", ".vscode/tasks.json", ".mcp.json", ".git/config", ".idea/workspace.xml",
             ".claude/settings.json"]
BLOCKED = [*INTERNAL, *INTERNAL6, "10.0.2.2", "127.0.0.1"]
REFUSED = ("ECONNREFUSED", "timeout", "ENETUNREACH", "EHOSTUNREACH", "ECONNRESET")

# What each level promises for the probe's keys ("-" = not a promise at this level: the guest's own kernel).
EXPECT = {
    #  key                 L2                          L3
    "creds":            ("ENOENT",                  "ENOENT"),
    "canary_hits":      ("none",                    "none"),
    "env_hits":         ("none",                    "none"),
    "protected_writes": ("EROFS/EACCES/EPERM",      "EROFS even as root"),
    "project_write":    ("ok",                      "ok, visible on the host"),
    "blocked net":      ("refused",                 "refused"),
    "public net":       ("ok",                      "ok"),
    "bashrc":           ("not the host's",          "guest tmpfs: host file unchanged"),
    "userns/keyctl":    ("EPERM",                   "-"),
    "tiocsti":          ("EPERM",                   "- (the guest's own pty)"),
}


DENTRIES = """import os, time
count = lambda: int(open("/proc/sys/fs/dentry-state").read().split()[0])
start, seen = count(), 0
for dirpath, dirs, files in os.walk("/usr"):  # each name listed is a dentry, and an inode virtiofsd holds open
    seen += len(dirs) + len(files)
    if seen > 12000:
        break
time.sleep(2.5)
print("dentries", start, seen, count())
"""


def _config(l3: L3, project: Path) -> dict:
    return {
        "canary": l3.canary,
        "secret": l3.secret,
        "home": str(l3.home),
        "project": str(project),
        "creds": [str(l3.home / rel) for rel in CREDS],
        "unix": ["/run/dbus/system_bus_socket", "/var/run/docker.sock", str(Path(l3.netd_sock))],
        "abstract": [],
        "blocked": BLOCKED,
        "blocked_ports": [["10.0.2.2", GW_LOOPBACK_PORT], ["127.0.0.1", GW_LOOPBACK_PORT], ["::1", GW_LOOPBACK_PORT]],
        "public": [PUBLIC, PUBLIC6],
        "port": PORT,
        "timeout": 5,
        "protected": PROTECTED,
    }


def _live_ids(l3: L3) -> set[str]:
    out = l3.posture("status", "--json")
    assert out.returncode == 0, out.stderr
    return {s["id"] for s in json.loads(out.stdout) if s["status"] in ("starting", "running", "frozen")}


def test_exec_streams_and_exit_code(l3: L3) -> None:
    project = l3.make_project("streams")
    proc = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--",
                      "sh", "-c", "echo to-out; echo to-err >&2; echo $POSTURE_LEVEL $POSTURE_SESSION; exit 42", cwd=project)
    assert proc.returncode == 42, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "to-out" and lines[1].startswith("l3 "), proc.stdout
    assert "to-err" in proc.stderr and "to-out" not in proc.stderr
    assert l3.domains() == [], "nothing may stay defined or running in libvirt after the session"


@pytest.mark.parametrize("agent", ["native", "python"])
def test_both_guest_agents_run_commands(l3: L3, agent: str) -> None:
    """[l3] agent picks the guest's exec agent; both keep the streams apart and pass exit codes and stdin, as the user."""
    ro_file = Path(f"/srv/posture-l3-ro-{agent}.txt")  # a file bind outside the home: its mount point is in the read-only root share
    ro_file.parent.mkdir(exist_ok=True)
    ro_file.write_text(f"ro-bind-{agent}\n")
    ro_file.chmod(0o644)
    cfg = l3.config(f'agent = "{agent}"\n[mounts]\nro = ["{ro_file}"]\n')
    project = l3.make_project(f"agent-{agent}")
    proc = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--",
                      "sh", "-c", "read line; echo got:$line; echo to-err >&2; id -u >&2; tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1 >&2; exit 7", cwd=project,
                      stdin="hello\n", XDG_CONFIG_HOME=str(cfg))
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.strip().splitlines()[-2] == str(l3.uid), proc.stderr
    assert proc.stdout == "got:hello\n" and "to-err" in proc.stderr
    pid1 = proc.stderr.strip().splitlines()[-1]  # the guest's PID 1 is the agent (its command line: the Python agent
    assert pid1 == "/.posture-guest/agent" if agent == "native" else pid1.startswith("/usr/bin/python3"), proc.stderr  # is not dumpable)
    missing = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--", "no-such-command-here",
                         cwd=project, XDG_CONFIG_HOME=str(cfg))
    assert missing.returncode == 127 and "no-such-command-here" in missing.stderr, missing.stderr
    # with virtiofsd's descriptor limit at 8192 the guest's inode reaper drops what passes 2048 (each init has one);
    # the test hook starts it 500 ms late, after PID 1 has switched roots (a chroot by path then found nothing)
    bound = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--", "sh", "-c",
                       f"cat {ro_file}; echo x >> {ro_file} && echo WRITABLE; sleep 1; "
                       "echo reapers $(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^posture-reaper$'); "
                       f"python3 -c '{DENTRIES}'",
                       cwd=project, XDG_CONFIG_HOME=str(cfg), nofile=8192, POSTURE_FAULT_AT="l3-reaper-late")
    assert bound.stdout.startswith(f"ro-bind-{agent}\n") and "WRITABLE" not in bound.stdout, (bound.stdout, bound.stderr)  # bound, read-only
    assert ro_file.read_text() == f"ro-bind-{agent}\n"
    assert "reapers 1\n" in bound.stdout, bound.stdout  # one reaper, alive in the guest's root
    start, seen, end = (int(n) for n in bound.stdout.split("dentries ")[1].split())
    assert seen > 12000 and end < start + 6000, (start, seen, end)  # over 12,000 looked up, and dropped again
    ro_file.unlink()


def test_a_guest_that_does_not_answer_gets_one_fresh_vm(l3: L3) -> None:
    """The first guest stalls before its agent starts (test hook); posture boots one more VM, then runs."""
    cfg = l3.config(replace=("boot_timeout = 90", "boot_timeout = 30"))
    project = l3.make_project("stall")
    proc = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--", "echo", "second-try-ok", cwd=project,
                      XDG_CONFIG_HOME=str(cfg), POSTURE_FAULT_AT="l3-boot")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "second-try-ok\n"
    assert "did not come up within 30s" in proc.stderr and "stalled on purpose" in proc.stderr and "trying once more" in proc.stderr
    assert l3.domains() == [], "the stalled VM is gone too"


@pytest.mark.parametrize("mode", ["pipes", "pty"])
def test_probe_cannot_break_out(l3: L3, mode: str) -> None:
    """pipes: the probe as the user (the agent's default); pty: as guest root, against which the host side holds too."""
    project = l3.make_project(f"probe-{mode}")
    shutil.copy(PROBE, project / "probe.py")
    os.chown(project / "probe.py", l3.uid, l3.gid)
    bashrc_before = (l3.home / ".bashrc").read_text()
    config_before = (project / ".git" / "config").read_text()
    as_root = mode == "pty"
    extra = {"XDG_CONFIG_HOME": str(l3.config("guest_root = true\n"))} if as_root else {}
    cfg = _config(l3, project)
    if not as_root:  # guest root's walk (pty) reads all the user's can, and /usr by name is 140,000 lookups under TCG
        cfg["scan_skip"] = ["/usr"]
    # as guest root with a small descriptor limit for virtiofsd (8192; a user's is often 524288): its walk of /usr
    # alone looks up 140,000 inodes, which only the guest's inode reaper keeps from exhausting virtiofsd (EMFILE)
    proc = l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--",
                      "python3", "probe.py", json.dumps(cfg), cwd=project, tty=mode == "pty", timeout=900,
                      nofile=8192 if as_root else None, **extra)  # under TCG the probe's walk of the whole view takes a minute
    report = probe_report(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    # the walk for the canary covered the view: nothing failed but what the session may not read
    assert {k: v for k, v in report["scan_errors"].items() if k not in ("EACCES", "EPERM")} == {}, report["scan_errors"]

    assert report["uid"] == (0 if as_root else l3.uid), report["uid"]
    # credentials, the canary, secrets: absent
    assert set(report["creds"].values()) == {"ENOENT"}, report["creds"]
    assert report["canary_hits"] == [], report["canary_hits"]
    assert report["env_hits"] == [], report["env_hits"]
    # another project's agent state is not there
    assert report["agent_state"] in (None, []), report["agent_state"]
    # host unix sockets do not exist in the guest
    assert all(r in ("ENOENT", "ECONNREFUSED") for r in report["unix"].values()), report["unix"]

    # protected project paths: read-only on the host side, even for guest root (control: a project write works)
    for rel, result in report["protected_writes"].items():
        # as guest root the probe has unshared a user namespace by now, so the guest kernel may refuse first (EACCES);
        # test_l3_user.py's guest-root test writes the protected paths with root's full powers and gets EROFS
        assert result in (("EROFS", "EACCES") if as_root else ("EROFS",)), (rel, result)
    assert (project / ".git" / "config").read_text() == config_before
    assert not (project / ".envrc").exists() or (project / ".envrc").read_text() == ""
    if as_root:  # guest root cannot create files in the user's project at all (they could only be someone else's)
        assert report["project_write"] != "ok" and not (project / "from-sandbox.txt").exists(), report["project_write"]
    else:
        assert report["project_write"] == "ok"
        assert (project / "from-sandbox.txt").read_text() == "made inside\n", "a project write must be visible on the host"
        assert (project / "from-sandbox.txt").stat().st_uid == l3.uid
        assert report["git_commit"] == 0
        log = l3.run_as("git", "log", "--format=%s", "-1", cwd=project).stdout.strip()
        assert log == "from the sandbox"

    # the host's home is not the guest's: writing ~/.bashrc inside does not reach the host
    assert (l3.home / ".bashrc").read_text() == bashrc_before

    # network: internal ranges, metadata, v6 internal and the GW host's loopback refused; public reachable
    net = report["net"]
    for addr in BLOCKED:
        assert net[f"{addr}:{PORT}"] in REFUSED, (addr, net[f"{addr}:{PORT}"])
    for addr, port in (("10.0.2.2", GW_LOOPBACK_PORT), ("127.0.0.1", GW_LOOPBACK_PORT), ("::1", GW_LOOPBACK_PORT)):
        assert not net[f"{addr}:{port}"].startswith("ok"), (addr, port, net[f"{addr}:{port}"])
    assert net[f"{PUBLIC}:{PORT}"] == f"ok:hello from {PUBLIC}", net
    assert net[f"{PUBLIC6}:{PORT}"] == f"ok:hello from {PUBLIC6}", net

    if mode == "pty":
        assert report["isatty"] == [True, True, True]
    else:
        assert report["isatty"] == [False, False, False]
    # no placeholder for a protected path is left behind in the project
    for rel in (".envrc", ".vscode", ".idea", ".mcp.json", ".claude"):
        assert not (project / rel).exists(), rel
    assert l3.domains() == []


def test_a_file_server_that_dies_ends_the_session_instead_of_hanging(l3: L3) -> None:
    """virtiofsd killed under a running guest: posture says so, ends the VM and exits, with the project's work kept."""
    project = l3.make_project("fsdies")
    proc = l3.popen("exec", str(project), "--level", "l3", "--profile", "shell", "--",
                    "sh", "-c", "echo kept > kept.txt; touch started; sleep 300", cwd=project,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (project / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.2)
        servers = subprocess.run(["pgrep", "-u", str(l3.uid), "-x", "virtiofsd"], capture_output=True, text=True).stdout.split()
        assert servers, "no virtiofsd of this user"
        for pid in servers:
            os.kill(int(pid), signal.SIGKILL)
        _, err = proc.communicate(timeout=30)  # before: posture waited for ever on a guest stuck in a file access
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "the guest's file server (virtiofsd) stopped; its VM is ended" in err, err
    assert (project / "kept.txt").read_text() == "kept\n"
    assert l3.domains() == []
    # no virtiofsd lives on (a killed one's children may be zombies of PID 1 for a moment: not running)
    left = subprocess.run(["ps", "-o", "stat=,comm=", "-u", str(l3.uid)], capture_output=True, text=True).stdout.splitlines()
    assert [ln for ln in left if "virtiofsd" in ln and not ln.lstrip().startswith("Z")] == [], left


def test_kept_sessions_codes_tty_and_down(l3: L3) -> None:
    """Two sessions at once (kept by their keepers); exit codes pass through; tty has the window size."""
    a, b = l3.make_project("kept-a"), l3.make_project("kept-b")
    before = _live_ids(l3)
    ups = [l3.popen("up", str(p), "--level", "l3", "--profile", "shell", "--detach", "--", "sleep", "infinity", cwd=p,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (a, b)]
    for up in ups:
        out, err = up.communicate(timeout=300)
        assert up.returncode == 0, err
    ids = sorted(_live_ids(l3) - before)
    assert len(ids) == 2, ids
    assert sorted(l3.domains()) == sorted(f"posture-{i}" for i in ids)
    try:
        sid = ids[0]
        for code in (0, 1, 42):
            proc = l3.posture("exec", "--session", sid, "--", "sh", "-c", f"exit {code}")
            assert proc.returncode == code, proc.stderr
        proc = l3.posture("exec", "--session", sid, "--", "sh", "-c", "kill -TERM $$")
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
        proc = l3.posture("exec", "--session", sid, "--", "sh", "-c", "kill -KILL $$")
        assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
        proc = l3.posture("exec", "--session", sid, "--", "cat", stdin="through stdin\n")
        assert proc.stdout == "through stdin\n", proc.stderr
        proc = l3.posture("exec", "--session", sid, "--", "sh", "-c", "stty size; tty", tty=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout.replace("\r", "")
        assert "33 101" in out and re.search(r"/dev/pts/\d+", out), out
        # each session writes its own project, seen on the host
        for sid_ in ids:
            proc = l3.posture("exec", "--session", sid_, "--", "sh", "-c", "echo $POSTURE_SESSION > session.txt; pwd")
            assert proc.returncode == 0, proc.stderr
        written = {(p / "session.txt").read_text().strip() for p in (a, b) if (p / "session.txt").exists()}
        assert written == set(ids)
    finally:
        for sid_ in ids:
            l3.posture("down", "--session", sid_)
    assert wait_for(lambda: l3.domains() == [], 30), l3.domains()
    assert not _virtiofsd_for(ids), "virtiofsd of a stopped session survived"


def _virtiofsd_for(ids: list[str]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"virtiofsd" in cmd and any(i.encode() in cmd for i in ids):
                found.append(int(entry))
    return found


def test_kill9_takes_the_vm_along(l3: L3) -> None:
    project = l3.make_project("kill9")
    before = set(l3.domains())
    proc = l3.popen("exec", str(project), "--level", "l3", "--profile", "shell", "--", "sh", "-c", "echo up; sleep 600",
                    cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"up":
            proc.kill()
            _out, err = proc.communicate()
            raise AssertionError(f"the session did not start: {line!r} {err.decode(errors='replace')[-2000:]}")
        started = set(l3.domains()) - before
        assert len(started) == 1, started
        ids = [n[len("posture-"):] for n in started]
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        assert wait_for(lambda: not (set(l3.domains()) & started), 15), "the VM outlived its posture process"
        gone_after = time.monotonic() - t0
        assert gone_after < 15
        assert wait_for(lambda: not _virtiofsd_for(ids), 10), "virtiofsd outlived its posture process"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_doctor_reports_l3(l3: L3) -> None:
    """Against the real private libvirtd: every L3 line, and a failing one with its fix."""
    r = l3.posture("doctor", "--json")
    assert r.returncode == 0, r.stderr
    by = {row["check"]: row for row in json.loads(r.stdout) if row.get("level") == "l3"}
    for check in ("l3 user", "l3 libvirt group", "l3 user namespaces", "l3 libvirt-python", "l3 libvirtd", "l3 shared memory", "l3 virtiofsd", "l3 kernel", "l3 busybox",
                  "l3 exec agent", "l3 accelerator", "l3 network"):
        assert by[check]["ok"], by[check]
    assert by["l3 exec agent"]["detail"].startswith("native"), by["l3 exec agent"]
    # which one, and why (or that the first session will probe it)
    assert by["l3 accelerator"]["detail"].startswith(("kvm:", "tcg:", "KVM not probed yet")), by["l3 accelerator"]
    cfg = l3.config(replace=(f'uri = "{l3.uri}"', f'uri = "qemu+unix:///system?socket={l3.home}/no-such.sock"'))
    r = l3.posture("doctor", "--json", XDG_CONFIG_HOME=str(cfg), POSTURE_NETD_SOCKET=str(l3.home / "none.sock"))
    by = {row["check"]: row for row in json.loads(r.stdout) if row.get("level") == "l3"}
    assert by["l3 /dev/kvm"]["detail"], by["l3 /dev/kvm"]  # said whether KVM is open to the user, with the fix if not
    assert not by["l3 libvirtd"]["ok"] and by["l3 libvirtd"]["fix"], by["l3 libvirtd"]
    assert not by["l3 network"]["ok"] and by["l3 network"]["fix"], by["l3 network"]


def test_doctor_says_which_group_is_missing(l3: L3) -> None:
    """The ordinary user without their supplementary groups (as before logging in again after `adduser`):
    doctor names the missing group with its fix, and the session refuses with the same fix."""
    env = [f"{k}={v}" for k, v in l3.env().items()]
    bare = ["setpriv", f"--reuid={l3.user}", f"--regid={l3.gid}", "--clear-groups", "--", "env", "-i", *env]
    r = subprocess.run([*bare, POSTURE, "doctor", "--json"], capture_output=True, text=True, timeout=120)
    by = {row["check"]: row for row in json.loads(r.stdout) if row.get("level") == "l3"}
    assert not by["l3 libvirt group"]["ok"] and f"adduser {l3.user} libvirt" in by["l3 libvirt group"]["fix"], by["l3 libvirt group"]
    assert not by["l3 libvirtd"]["ok"] and "libvirt group" in by["l3 libvirtd"]["fix"], by["l3 libvirtd"]
    project = l3.make_project("nogroup")
    r = subprocess.run([*bare, POSTURE, "exec", str(project), "--level", "l3", "--", "true"], capture_output=True, text=True, timeout=120, cwd=str(project))
    assert r.returncode == 69 and "libvirt group" in r.stderr, (r.returncode, r.stderr)


def test_setup_remove_keeps_the_kernel_and_purge_deletes_it(l3: L3, tmp_path: Path) -> None:
    """Root's `posture setup --remove` keeps the fetched kernel (every user's), `--remove --purge` deletes it;
    then a user's doctor says which step is missing. The kernel is put back afterwards."""
    from posture.l3 import kernel

    assets = kernel.SYSTEM_ASSETS
    assert assets.is_dir(), "the L3 suite fetches the kernel first"
    backup = tmp_path / "assets"
    subprocess.run(["cp", "-a", str(assets), str(backup)], check=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path), "POSTURE_NETD_SOCKET": str(tmp_path / "netd.sock"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    setup = ["ip", "netns", "exec", l3.net.gw, POSTURE, "setup", "--remove"]  # as root
    try:
        kept = subprocess.run(setup, env=env, capture_output=True, text=True, timeout=120)
        assert kept.returncode == 0, kept.stderr
        assert "kept the fetched L3 kernel" in kept.stdout + kept.stderr and assets.is_dir()
        purged = subprocess.run([*setup, "--purge"], env=env, capture_output=True, text=True, timeout=120)
        assert purged.returncode == 0, purged.stderr
        assert f"removed {assets}" in purged.stdout + purged.stderr and not assets.exists()
        r = l3.posture("doctor", "--json")
        by = {row["check"]: row for row in json.loads(r.stdout) if row.get("level") == "l3"}
        assert not by["l3 kernel"]["ok"] and "posture setup --l3-kernel" in by["l3 kernel"]["fix"], by["l3 kernel"]
    finally:
        if not assets.exists():
            subprocess.run(["mv", str(backup), str(assets)], check=True)
