"""L3 as the ordinary user: ownership of what the guest writes, git in the user's repository,
what guest root cannot leave on the host, two users at once, and the network helper's checks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from l3env import L3, wait_for

pytestmark = [pytest.mark.root, pytest.mark.l3]


def _exec(l3: L3, project: Path, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return l3.posture("exec", str(project), "--level", "l3", "--profile", "shell", "--", "sh", "-c", script, cwd=project, **extra)


def test_guest_writes_belong_to_the_user_and_git_commits(l3: L3) -> None:
    """The agent's commands run as the user's uid and home; files and commits land as the user's own."""
    project = l3.make_project("owner")
    proc = _exec(l3, project, "id -u; id -g; echo $HOME; echo made > made.txt; mkdir sub && echo x > sub/y; "
                              "git add made.txt sub && git commit -qm 'from the guest' && echo committed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.split()
    assert lines[:3] == [str(l3.uid), str(l3.gid), str(l3.home)], proc.stdout
    assert lines[-1] == "committed", proc.stdout + proc.stderr
    for rel in ("made.txt", "sub", "sub/y"):
        st = os.stat(project / rel)
        assert (st.st_uid, st.st_gid) == (l3.uid, l3.gid), (rel, st.st_uid, st.st_gid)
    log = l3.run_as("git", "log", "--format=%s %an", "-1", cwd=project)
    assert log.stdout.strip() == "from the guest Posture Test", log
    objects = [p for p in (project / ".git" / "objects").rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_uid == l3.uid for p in objects)
    assert l3.domains() == []


GUEST_ROOT_ATTACKS = r"""
id -u
try() { if "$@" 2>/dev/null; then echo "$1:ok"; else echo "$1:refused"; fi; }
echo base > owned.txt 2>/dev/null; echo "create-as-root:$([ -e owned.txt ] && echo ok || echo refused)"
try chown 0:0 mine.txt
try chown 4242 mine.txt
try chgrp 0 mine.txt
try chmod u+s mine.txt
try chmod g+s mine.txt
try chmod 6755 tool.sh
try mknod dev-null c 1 3
try mknod dev-sda b 8 0
try mkfifo fifo
try cp /bin/sh setuid-sh
[ -e setuid-sh ] && try chmod 4755 setuid-sh
python3 -c "import os; os.close(os.open('made-setuid', os.O_CREAT | os.O_WRONLY, 0o4755))" 2>/dev/null && echo "open-4755:ok" || echo "open-4755:refused"
echo appended >> mine.txt && echo "write-existing:ok"
for p in .git/config .git/hooks/pre-commit; do echo evil >> $p 2>/dev/null && echo "protected-$p:ok" || echo "protected-$p:refused"; done
chmod 0777 .git/config 2>/dev/null && echo "protected-chmod:ok" || echo "protected-chmod:refused"
true
"""


def test_guest_root_cannot_leave_foreign_setuid_or_device_files(l3: L3) -> None:
    """Guest root (`[l3] guest_root = true`) attacks the project; the host side refuses each (control: it can still
    write the user's existing files, and the user can chmod normally)."""
    project = l3.make_project("guestroot")
    (project / "mine.txt").write_text("mine\n")
    (project / "tool.sh").write_text("#!/bin/sh\n")
    l3.run_as("chmod", "0755", str(project / "tool.sh"))
    subprocess.run(["chown", f"{l3.uid}:{l3.gid}", str(project / "mine.txt"), str(project / "tool.sh")], check=True)
    config_before = (project / ".git" / "config").read_text()
    cfg = l3.config('guest_root = true\n')
    proc = _exec(l3, project, GUEST_ROOT_ATTACKS, XDG_CONFIG_HOME=str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = dict(line.split(":", 1) for line in proc.stdout.split() if ":" in line)
    assert proc.stdout.split()[0] == "0", proc.stdout  # the attacks ran as guest root
    for attack in ("chown", "chgrp", "chmod", "mknod", "open-4755", "create-as-root"):
        assert out.get(attack) == "refused", (attack, proc.stdout)
    assert out.get("write-existing") == "ok", proc.stdout  # control: guest root still reaches the user's own files
    for attack in ("protected-.git/config", "protected-.git/hooks/pre-commit", "protected-chmod"):
        assert out.get(attack) == "refused", (attack, proc.stdout)  # read-only on the host side, even to guest root
    assert (project / "mine.txt").read_text() == "mine\nappended\n"
    assert (project / ".git" / "config").read_text() == config_before
    print(proc.stdout)  # what each attack got, for the record
    for path in project.rglob("*"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (l3.uid, l3.gid), (path, st.st_uid, st.st_gid)
        assert not st.st_mode & 0o6000, (path, oct(st.st_mode))
        assert not (os.path.stat.S_ISCHR(st.st_mode) or os.path.stat.S_ISBLK(st.st_mode)), path
    # the user (not root) in the guest: chmod works, setuid/setgid bits do not
    proc = _exec(l3, project, "chmod 0700 tool.sh && echo chmod:ok; chmod u+s tool.sh && echo suid:ok || echo suid:refused;"
                              " chmod g+s tool.sh && echo sgid:ok || echo sgid:refused")
    assert proc.stdout.split() == ["chmod:ok", "suid:refused", "sgid:refused"], proc.stdout + proc.stderr
    assert (project / "tool.sh").stat().st_mode & 0o7777 == 0o700
    assert l3.domains() == []


def _up(env: L3, project: Path) -> str:
    before = _ids(env)
    up = env.posture("up", str(project), "--level", "l3", "--profile", "shell", "--detach", "--", "sleep", "infinity", cwd=project)
    assert up.returncode == 0, up.stderr
    new = _ids(env) - before
    assert len(new) == 1, new
    return new.pop()


def _ids(env: L3) -> set[str]:
    out = env.posture("status", "--json")
    assert out.returncode == 0, out.stderr
    return {s["id"] for s in json.loads(out.stdout) if s["status"] in ("starting", "running", "frozen")}


NETD_ASK = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(json.dumps(json.loads(sys.argv[2])).encode() + b"\\n")
print(s.makefile().readline())
"""


def test_two_users_at_once_do_not_see_each_other(l3: L3) -> None:
    """posture-test and posture-test2 each run a VM; neither guest sees the other's project or home, each user's files
    are their own, and the network helper refuses one user's request about the other's VM."""
    a, b = l3, l3.other
    pa, pb = a.make_project("two-a"), b.make_project("two-b")
    sa = _up(a, pa)
    try:
        sb = _up(b, pb)
        try:
            for me, sid, mine, theirs, them in ((a, sa, pa, pb, b), (b, sb, pb, pa, a)):
                look = me.posture("exec", "--session", sid, "--", "sh", "-c",
                                  f"id -u; echo $POSTURE_SESSION > who.txt; for p in {theirs} {them.home} {theirs}/README.md; do"
                                  " [ -e $p ] && echo SEEN:$p; done; ls /home 2>/dev/null; true")
                assert look.returncode == 0, look.stderr
                assert look.stdout.split()[0] == str(me.uid), look.stdout
                assert "SEEN:" not in look.stdout, look.stdout
                assert (mine / "who.txt").read_text().strip() == sid
                assert (mine / "who.txt").stat().st_uid == me.uid
            # the helper finds QEMU itself and checks its owner: b may not move or release a's VM
            uuid_a = _uuid(a, sa)
            for action in ("attach", "release"):
                req = json.dumps({"op": "vm", "action": action, "session": sa, "uuid": uuid_a})
                r = b.run_as("/usr/bin/python3", "-c", NETD_ASK, a.netd_sock, req)
                answer = json.loads(r.stdout)
                if action == "attach":
                    assert not answer["ok"] and answer["code"] == "denied", answer
                else:  # release is keyed by the caller's uid: nothing of b's to release, a's VM keeps its network
                    assert answer == {"ok": True, "released": False}, answer
            still = a.posture("exec", "--session", sa, "--", "sh", "-c", "echo alive")
            assert still.stdout.strip() == "alive", still.stderr
            assert f"vm-u{a.uid}-{sa}" in _cgroup_of_qemu(sa), "a's QEMU left the filtered cgroup"
        finally:
            b.posture("down", "--session", sb)
    finally:
        a.posture("down", "--session", sa)
    assert wait_for(lambda: a.domains() == [], 30), a.domains()


def _uuid(env: L3, sid: str) -> str:
    import libvirt

    conn = libvirt.open(env.uri)
    try:
        return conn.lookupByName(f"posture-{sid}").UUIDString()
    finally:
        conn.close()


def _cgroup_of_qemu(sid: str) -> str:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"qemu-system" in cmd and f"guest=posture-{sid},".encode() in cmd:
                    return Path(f"/proc/{entry}/cgroup").read_text()
            except OSError:
                continue
    return ""


def test_root_still_runs_l3(l3: L3) -> None:
    """Root's sessions take the same path as before: guest root, files root's, QEMU as libvirt's QEMU user."""
    r = l3.root
    project = r.make_project("root")
    proc = _exec(r, project, "id -u; echo made > made.txt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[0] == "0"
    assert (project / "made.txt").stat().st_uid == 0
    assert r.domains() == []


FILTER_PROBE = r"""
import errno, os, sys
sys.path.insert(0, sys.argv[1])
import stage
from posture.l3 import fsfilter
d = sys.argv[2]
open(f"{d}/bpf", "wb").write(fsfilter.build())
stage.enter_userns(os.getuid(), os.getgid())
stage.load_filter(f"{d}/bpf")
def t(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
r = {
    "setgroups": t(lambda: os.setgroups([])),
    "chmod644": t(lambda: os.chmod(f"{d}/f", 0o644)),
    "chmod4755": t(lambda: os.chmod(f"{d}/f", 0o4755)),
    "chmod2755": t(lambda: os.chmod(f"{d}/f", 0o2755)),
    "create4755": t(lambda: os.close(os.open(f"{d}/g", os.O_CREAT | os.O_WRONLY, 0o4755))),
    "create644": t(lambda: os.close(os.open(f"{d}/h", os.O_CREAT | os.O_WRONLY, 0o644))),
    "open_existing": t(lambda: os.close(os.open(f"{d}/f", os.O_RDONLY, 0o7777))),
    "mkdir_sgid": t(lambda: os.mkdir(f"{d}/sg", 0o2755)),
    "mknod_chr": t(lambda: os.mknod(f"{d}/c", 0o600 | 0o020000, os.makedev(1, 3))),
    "mkfifo": t(lambda: os.mkfifo(f"{d}/p")),
    "chown_other": t(lambda: os.chown(f"{d}/f", 4242, -1)),
    "chown_root": t(lambda: os.chown(f"{d}/f", 0, 0)),
    "chown_self": t(lambda: os.chown(f"{d}/f", os.getuid(), os.getgid())),
    "setxattr": t(lambda: os.setxattr(f"{d}/f", "user.x", b"1")),
}
print(r)
"""


def test_virtiofsd_filter_and_namespace_refuse_what_they_must(tmp_path: Path) -> None:
    """Without a guest: the user namespace (only the user's ids) and l3/fsfilter.py's filter, as virtiofsd gets them,
    applied to a process of posture-test (controls: ordinary chmod, create and chown to oneself work)."""
    import ast
    import pwd

    from l3env import USER

    pw = pwd.getpwnam(USER)
    d = Path("/tmp") / f"posture-filter-{os.getpid()}"
    d.mkdir(mode=0o755)
    try:
        (d / "f").write_text("x")
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(d)], check=True)
        stage_dir = str(Path(__import__("posture.l3.stage", fromlist=["x"]).__file__).parent)
        proc = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                               os.sys.executable, "-c", FILTER_PROBE, stage_dir, str(d)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        r = ast.literal_eval(proc.stdout.strip())
        assert r == {
            "setgroups": "ok",  # a no-op: virtiofsd's start needs it to succeed; the process keeps the user's own groups
            "chmod644": "ok", "chmod4755": "EPERM", "chmod2755": "EPERM",
            "create4755": "EPERM", "create644": "ok", "open_existing": "ok", "mkdir_sgid": "EPERM",
            "mknod_chr": "EPERM", "mkfifo": "ok",
            "chown_other": "EINVAL", "chown_root": "EINVAL", "chown_self": "ok",
            "setxattr": "EPERM",
        }, r
        assert not (d / "g").exists()
        assert not any(p.stat().st_mode & 0o6000 for p in d.iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(d)])
