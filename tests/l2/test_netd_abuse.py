"""The root network helper under abuse by an ordinary local user.

The abuser is the ordinary user `nobody` (its own uid, so its bounds are its own); the
legitimate user is `posture-test`, whose real L2 session (one that reaches the test
network's "public" host) must start and succeed, within a bound, while the abuse goes on:
thousands of idle connections, half-sent requests, oversized and deeply nested JSON, wrong
types, other users' processes, the helper's own network namespace, path characters in a
session id, and a flood of attach requests for real sandboxes of the abuser's. The helper
answers or closes, never crashes, and its threads and descriptors stay bounded.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from l2env import L2, POSTURE, stop_netd

from posture.netd import cgroups
from posture.netd import client as netd
from posture.netd.limits import MAX_REQUEST, WORKERS, Limits
from testnet import PORT, PUBLIC

pytestmark = [pytest.mark.root, pytest.mark.l2]

ABUSER = "nobody"
DEFAULTS = Limits()
MAX_THREADS = 2 + WORKERS * 3  # the loop, the launcher filler, and per worker its attach's two helpers
TEST_BOUND = 60  # seconds any one test here may take

ABUSER_PROGRAM = str(Path(__file__).with_name("netd_abuser.py"))  # readable by everyone, run as ABUSER


# ------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Every test here ends within TEST_BOUND seconds, passing or failing."""
    def expire(*_: object) -> None:
        raise TimeoutError(f"abuse test ran longer than {TEST_BOUND} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_BOUND)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def abuser(sock: str, *args: str) -> subprocess.Popen[str]:
    """The abuser's program, running as the ordinary user `nobody`."""
    return subprocess.Popen(["runuser", "-u", ABUSER, "--", sys.executable, "-I", ABUSER_PROGRAM, sock, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def send_raw(sock: str, payloads: list[bytes], wait: float = 10.0) -> list[dict]:
    """Send each payload on its own connection as `nobody`, all at once; what came back on each."""
    proc = abuser(sock, "raw", str(wait))
    out, err = proc.communicate(json.dumps([base64.b64encode(p).decode() for p in payloads]), timeout=wait + 20)
    assert proc.returncode == 0, err
    return json.loads(out)


def send_as_abuser(sock: str, requests: list[dict]) -> list[dict]:
    """Send each request object as `nobody`; the answer to each (None if closed without one)."""
    return [r["answer"] for r in send_raw(sock, [json.dumps(r).encode() + b"\n" for r in requests])]


def as_user(user: str, *argv: str, net: str | None = None) -> subprocess.Popen:
    """A process of `user` (setpriv execs, so the pid is the program's), optionally in the namespace `net`."""
    pw = pwd.getpwnam(user)
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *argv]
    if net:
        cmd = ["nsenter", f"--net={net}", *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == os.path.basename(argv[-2] if argv[-1].isdigit() else argv[-1]):
                if os.stat(f"/proc/{proc.pid}").st_uid == pw.pw_uid:
                    return proc
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"could not start {argv} as {user}")


class Helper:
    """The fixture's helper process: alive, the same pid, its rule verified, its threads bounded."""

    def __init__(self, l2: L2) -> None:
        assert l2.netd_proc is not None
        self.l2, self.proc, self.pid = l2, l2.netd_proc, l2.netd_proc.pid
        assert l2.settled()
        time.sleep(0.5)  # the launcher pool is topped up a moment after each attach
        self.fds0 = self.fds()

    def fds_back(self, slack: int = 2, timeout: float = 20.0) -> bool:
        """Wait until the helper holds (about) the descriptors it held at the start, nothing of the abuse (its
        clean-up of dozens of sessions takes seconds on a busy machine; a leak never comes back)."""
        deadline = time.monotonic() + timeout
        while True:  # judged on the one sample that ended the wait: the launcher pool's refill opens pipes for a moment
            if self.fds() <= self.fds0 + slack:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> list[str]:
        """What the helper's descriptors are, for a failure's message."""
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return sorted(out)

    def threads(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def check(self) -> None:
        assert self.proc.poll() is None, f"the helper died: {(Path(self.l2.sock).parent / 'netd.log').read_text()[-3000:]}"
        assert self.l2.netd_proc is self.proc
        assert self.threads() <= MAX_THREADS, self.threads()
        st = netd.request(self.l2.sock, {"op": "status"}, timeout=10)
        assert st["verified"] and st["pid"] == self.pid, st


@pytest.fixture(scope="module")
def baseline(l2: L2) -> float:
    """How long a legitimate session takes here with nobody abusing the helper (the best of two)."""
    project = l2.make_project("abuse-baseline")
    return min(_session(l2, project) for _ in range(2))


def _session(l2: L2, project: Path) -> float:
    reach = f"import socket; s=socket.create_connection(('{PUBLIC}', {PORT}), timeout=5); print(s.recv(64).decode())"
    for attempt in range(2):
        started = time.monotonic()
        r = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "python3", "-c", reach, timeout=60)
        took = time.monotonic() - started
        if attempt == 0 and r.returncode == 69 and _bwrap_loopback_race(l2, r.stderr):
            # A race inside bwrap 0.8 (not the helper): about one sandbox in 50 dies setting up its own
            # loopback ("loopback: Failed RTM_NEWADDR: No child processes"), with or without abuse. Once more.
            print("bwrap's loopback set-up failed (a known race outside the helper); running the session again")
            continue
        break
    assert r.returncode == 0 and f"hello from {PUBLIC}" in r.stdout, (r.returncode, r.stdout, r.stderr)
    return took


def _bwrap_loopback_race(l2: L2, stderr: str) -> bool:
    found = re.search(r"session (\S+)'s sandbox is not running", stderr)
    if not found:
        return False
    log = Path(f"/tmp/posture-{l2.uid}") / found.group(1) / "bwrap.log"
    try:
        return "loopback: Failed RTM_NEWADDR" in log.read_text()
    except OSError:
        return False


def legitimate_session(l2: L2, baseline: float, name: str) -> float:
    """posture-test's real L2 session reaches the public host, within its normal time (plus slack for a busy box)."""
    took = _session(l2, l2.make_project(name))
    print(f"{name}: legitimate session {took:.2f} s (baseline {baseline:.2f} s)")
    assert took < baseline * 2 + 10, f"the legitimate session took {took:.1f} s (normally {baseline:.1f} s)"
    return took


# ------------------------------------------------------------------ tests
def test_thousands_of_idle_connections(l2: L2, baseline: float) -> None:
    helper = Helper(l2)
    rss0 = helper.rss_kib()
    n = 3000
    proc = abuser(l2.sock, "idle", str(n))
    try:
        assert proc.stdout is not None and proc.stdin is not None
        opened = json.loads(proc.stdout.readline() or "{}")
        assert opened.get("opened") == n, proc.stderr.read() if proc.stderr else ""
        assert opened["highest_fd"] > 1024  # the descriptor numbers select() could not watch
        # the helper holds at most the abuser's share, and serves everyone else
        assert helper.fds() <= helper.fds0 + DEFAULTS.max_per_uid + 8, helper.fds()
        print(f"idle: helper fds {helper.fds0} -> {helper.fds()}, threads {helper.threads()}, rss {rss0} -> {helper.rss_kib()} KiB")
        legitimate_session(l2, baseline, "abuse-idle")
        helper.check()
        # the idle ones are closed at their deadline, each told why
        time.sleep(DEFAULTS.request_timeout + 1)
        proc.stdin.write("report\n")
        proc.stdin.flush()
        got = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert got["open"] == 0 and got["other"] == [] and got["descriptors"] == 0, got
    assert got["per_uid"] + got["timeout"] == n and got["per_uid"] >= n - 2 * DEFAULTS.max_per_uid, got
    helper.check()
    assert helper.fds_back(), (helper.fds0, helper.fd_targets())
    assert helper.rss_kib() - rss0 < 64 * 1024, (rss0, helper.rss_kib())


def test_half_sent_and_silent_connections_are_closed_at_their_deadline(l2: L2, baseline: float) -> None:
    helper = Helper(l2)
    payloads = [b"", b'{"op": "sta', b'{"op": "status"', b"[" * 100, b" " * 1000]
    proc = abuser(l2.sock, "raw", "20")
    assert proc.stdin is not None
    proc.stdin.write(json.dumps([base64.b64encode(p).decode() for p in payloads * 4]))
    proc.stdin.close()
    legitimate_session(l2, baseline, "abuse-half")
    assert proc.stdout is not None
    results = json.loads(proc.stdout.read())
    proc.wait(timeout=10)
    for r in results:
        assert r["closed"] and DEFAULTS.request_timeout - 0.5 < r["secs"] < DEFAULTS.request_timeout + 3, r
        assert r["answer"]["code"] == "limit" and "--request-timeout" in r["answer"]["error"], r
    helper.check()


def test_a_storm_of_connections_keeps_the_backlog_full(l2: L2, baseline: float) -> None:
    helper = Helper(l2)
    proc = abuser(l2.sock, "churn", "6")
    time.sleep(0.5)
    legitimate_session(l2, baseline, "abuse-churn")
    helper.check()
    assert proc.stdout is not None
    counts = [json.loads(line) for line in proc.stdout.read().splitlines()]
    proc.wait(timeout=10)
    print(f"storm: {counts}")
    assert len(counts) == 2 and sum(c["connects"] for c in counts) > 2000, counts
    helper.check()


BAD: list[tuple[bytes, str]] = [  # a request, and what the refusal names
    (b'{"op": "status", "pad": "' + b"a" * (MAX_REQUEST + 10) + b'"}\n', "larger than"),
    (b"x" * (4 * MAX_REQUEST), "larger than"),  # and no newline at all
    (b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper"),
    (b'{"op": "attach", "session": "a", "pid": 5, "block": [[[["10.0.0.0/8"]]]]}\n', "nested deeper"),
    (b"hello\n", "not JSON"),
    (b"\xff\xfe\x00\n", "not JSON"),
    (b'{"op": "status"}\x00\n', "not JSON"),
    (b"1e99999999\n", "JSON object"),
    (b"\n", "not JSON"),
    (b"null\n", "JSON object"),
    (b'["op", "status"]\n', "JSON object"),
    (b'{"op": 1}\n', "unknown op"),
    (b'{"op": "shutdown"}\n', "unknown op"),
    (b'{"op": "status", "verbose": true}\n', "unknown field"),
    (b'{"op": "attach", "session": 5, "pid": 10}\n', "attach.session"),
    (b'{"op": "attach", "session": "a", "pid": "10"}\n', "attach.pid"),
    (b'{"op": "attach", "session": "a", "pid": true}\n', "attach.pid"),
    (b'{"op": "attach", "session": "a", "pid": 1.5}\n', "attach.pid"),
    (b'{"op": "attach", "session": "a", "pid": -1}\n', "not a process id"),
    (b'{"op": "attach", "session": "a", "pid": 18446744073709551617}\n', "not a process id"),
    (b'{"op": "attach", "session": "a"}\n', "missing field 'pid'"),
    (b'{"op": "attach", "session": "a", "pid": 10, "block": "10.0.0.0/8"}\n', "attach.block"),
    (b'{"op": "attach", "session": "a", "pid": 10, "block": [1]}\n', "attach.block"),
    (b'{"op": "attach", "session": "a", "pid": 10, "block": ["not-a-range"]}\n', "not an address range"),
    (b'{"op": "attach", "session": "a", "pid": 10, "block": ' + json.dumps(["10.0.0.0/8"] * 300).encode() + b"}\n", "at most"),
    (b'{"op": "attach", "session": "a", "pid": 10, "ipv6": "yes"}\n', "attach.ipv6"),
    (b'{"op": "release"}\n', "missing field 'session'"),
    (b'{"op": "release", "session": ["x"]}\n', "release.session"),
    (b'{"op": "status"}\n{"op": "release", "session": "x"}\n', ""),  # one answer per connection: the first
]


def test_malformed_requests_are_refused_one_line_each(l2: L2, baseline: float) -> None:
    helper = Helper(l2)
    results = send_raw(l2.sock, [req for req, _ in BAD])
    for (req, names), r in zip(BAD, results):
        assert r["closed"], (req[:80], r)
        if not names:
            assert r["answer"]["ok"] and r["answer"]["pid"] == helper.pid, r
            continue
        answer = r["answer"]
        assert answer and answer["ok"] is False and answer["code"] == "invalid", (req[:80], r)
        assert names in answer["error"] and len(answer["error"]) < 300 and "\n" not in answer["error"], (req[:80], answer)
    helper.check()
    legitimate_session(l2, baseline, "abuse-malformed")
    assert l2.settled()


def test_attach_to_what_the_user_does_not_own_is_denied(l2: L2) -> None:
    helper = Helper(l2)
    others = [
        as_user("posture-test", "sleep", "60"),  # another user's process
        as_user("posture-test", "unshare", "-Urn", "sleep", "60"),  # another user's sandbox
        as_user(ABUSER, "sleep", "60", net=str(l2.net.gw_path)),  # the abuser's own, in the helper's namespace
        as_user(ABUSER, "sleep", "60"),  # the abuser's own, in a namespace it does not own
    ]
    try:
        targets = [1, helper.pid, *(p.pid for p in others), (1 << 22) - 1]
        answers = send_as_abuser(l2.sock, [{"op": "attach", "session": f"t{i}", "pid": pid} for i, pid in enumerate(targets)])
    finally:
        for p in others:
            p.kill()
            p.wait()
    why = ["does not belong", "does not belong", "does not belong", "does not belong",
           "shares the helper's network namespace", "is not owned by uid", "no process"]
    for pid, answer, reason in zip(targets, answers, why):
        assert answer and answer["code"] == "denied" and reason in answer["error"], (pid, answer)
    assert l2.box_cgroups() == [] and l2.net_cgroups() == []
    helper.check()


def test_session_ids_with_path_characters_are_refused(l2: L2) -> None:
    helper = Helper(l2)
    mine = as_user(ABUSER, "unshare", "-Urn", "sleep", "60")
    bad = ["../../../sys/fs/cgroup", "a/b", "..", ".", "-x", "x\x00y", "x\ny", "é", "a" * 65, "", "u0-x/../../y"]
    try:
        answers = send_as_abuser(l2.sock, [{"op": "attach", "session": s, "pid": mine.pid} for s in bad]
                                 + [{"op": "release", "session": s} for s in bad])
    finally:
        mine.kill()
        mine.wait()
    for answer in answers:
        assert answer and answer["code"] == "invalid" and "invalid session id" in answer["error"], answer
    base = cgroups.path_of(l2.base)
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["box", "net"]
    assert l2.box_cgroups() == []
    helper.check()


def test_a_flood_of_attach_requests(l2: L2, baseline: float) -> None:
    helper = Helper(l2)
    k = DEFAULTS.max_sessions_per_uid + 8
    boxes = abuser(l2.sock, "sandboxes", str(k))
    assert boxes.stdout is not None and boxes.stdin is not None
    try:
        pids = json.loads(boxes.stdout.readline())
        assert len(pids) == k
        # each sandbox asked for three times under different session ids, and many more connections than allowed
        reqs = [{"op": "attach", "session": f"flood{i}-{j}", "pid": pid, "ipv6": False}
                for j in range(3) for i, pid in enumerate(pids)]
        flood = abuser(l2.sock, "raw", "40")
        assert flood.stdin is not None
        flood.stdin.write(json.dumps([base64.b64encode(json.dumps(r).encode() + b"\n").decode() for r in reqs]))
        flood.stdin.close()
        time.sleep(0.5)  # the flood under way
        legitimate_session(l2, baseline, "abuse-flood")
        helper.check()
        assert flood.stdout is not None
        results = json.loads(flood.stdout.read())
        flood.wait(timeout=10)
        answers = [r["answer"] for r in results]
        for a in answers:
            assert a is not None, results
            if not a["ok"]:
                assert a["code"] in ("limit", "busy"), a
                if a["code"] == "limit":
                    assert "--max-sessions-per-uid" in a["error"] or "--max-per-uid" in a["error"], a
        # then every sandbox once more, fewer connections than the per-uid bound: all of them up to the bound
        more = [{"op": "attach", "session": f"again{i}", "pid": pid, "ipv6": False} for i, pid in enumerate(pids)]
        again = send_as_abuser(l2.sock, more)
        ok = [req["pid"] for req, a in zip(reqs + more, answers + again) if a and a["ok"]]
        assert len(ok) == DEFAULTS.max_sessions_per_uid, sorted(a.get("code", "ok") for a in again)
        assert len(set(ok)) == len(ok)  # one network per sandbox
        assert {a.get("code") for a in again} <= {"busy", "limit", None}, again
        assert any(a.get("code") == "limit" and "--max-sessions-per-uid 32" in a["error"] for a in again), again
        deadline = time.monotonic() + 5  # (the legitimate session's own may still be going)
        while len(l2.net_cgroups()) != len(ok) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(l2.net_cgroups()) == len(ok)
        helper.check()
    finally:
        boxes.stdin.write("stop\n")
        boxes.stdin.flush()
        boxes.wait(timeout=20)
    # the sandboxes ended: the helper notices each and cleans it up
    assert l2.settled(timeout=20), (l2.box_cgroups(), l2.net_cgroups())
    assert helper.fds_back(), (helper.fds0, helper.fd_targets())
    helper.check()


# ------------------------------------------------------------------ refusals at small limits
def _start_small(l2: L2, *flags: str, nofile: int = 0) -> tuple[subprocess.Popen, str, str]:
    """A second helper in the test network with small limits, its own socket, cgroup and table."""
    rundir = Path(l2.sock).parent
    sock, base, table = str(rundir / "small.sock"), f"{l2.base}-small", f"{l2.table}_small"
    log = open(rundir / "small.log", "ab")
    cap = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    proc = subprocess.Popen(["nsenter", f"--net={l2.net.gw_path}", sys.executable, "-m", "posture.netd", "--socket", sock,
                             "--cgroup", base, "--table", table, *flags], stdout=log, stderr=log, preexec_fn=cap)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if netd.request(sock, {"op": "status"}, timeout=2).get("verified"):
                return proc, sock, base
        except (OSError, ValueError, netd.NetdError):
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the small helper did not come up: {(rundir / 'small.log').read_text()[-2000:]}")


def test_refusals_name_the_limit_and_the_flag(l2: L2) -> None:
    proc, sock, base = _start_small(l2, "--max-connections", "5", "--max-per-uid", "3", "--max-sessions-per-uid", "1",
                                    "--request-timeout", "2")
    held: list[socket.socket] = []
    try:
        st = netd.request(sock, {"op": "status"})
        assert st["limits"] == {"max_connections": 5, "max_per_uid": 3, "max_sessions_per_uid": 1, "request_timeout": 2.0}
        for _ in range(3):  # root's own share
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            held.append(s)
        time.sleep(0.2)
        with pytest.raises(netd.NetdError) as exc:
            netd.request(sock, {"op": "status"})
        assert exc.value.code == "limit" and "limit reached" in str(exc.value)
        assert "--max-per-uid 3" in str(exc.value) and "posture netd --max-per-uid N" in str(exc.value)
        # another uid has its own share, up to the total
        answers = send_as_abuser(sock, [{"op": "status"}])
        assert answers[0]["ok"], answers
        idle = abuser(sock, "idle", "2")
        assert idle.stdout is not None and idle.stdin is not None
        assert json.loads(idle.stdout.readline())["opened"] == 2
        held[0].sendall(b'{"op": "stat')  # half a request
        time.sleep(0.2)
        answers = send_as_abuser(sock, [{"op": "status"}])
        assert answers[0]["code"] == "limit" and "--max-connections 5" in answers[0]["error"], answers
        # at the deadline every held connection is told and closed; then requests pass again
        time.sleep(2.5)
        for s in held:
            s.settimeout(1)
            answer = json.loads(s.recv(4096))
            assert answer["code"] == "limit" and "--request-timeout 2" in answer["error"], answer
            assert s.recv(1) == b""
        idle.stdin.write("report\n")
        idle.stdin.flush()
        got = json.loads(idle.stdout.readline())
        assert got == {"per_uid": 0, "timeout": 2, "descriptors": 0, "other": [], "open": 0}, got
        idle.wait(timeout=10)
        assert netd.request(sock, {"op": "status"})["ok"]

        # sessions per uid: the second one is refused, with the flag in the user's error
        project = l2.make_project("abuse-small")
        r = l2.posture("up", str(project), "--level", "l2", "--profile", "shell", "--detach", "--", "sleep", "10000",
                       POSTURE_NETD_SOCKET=sock)
        assert r.returncode == 0, r.stderr
        sid = r.stdout.strip().splitlines()[-1]
        try:
            r2 = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "true", POSTURE_NETD_SOCKET=sock)
            assert r2.returncode == 69, (r2.returncode, r2.stderr)
            assert "limit reached" in r2.stderr and "--max-sessions-per-uid 1" in r2.stderr, r2.stderr
        finally:
            r = l2.posture("down", "--session", sid, POSTURE_NETD_SOCKET=sock)
        assert r.returncode == 0, r.stderr
        r = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "true", POSTURE_NETD_SOCKET=sock)
        assert r.returncode == 0, r.stderr
        assert proc.poll() is None
    finally:
        for s in held:
            s.close()
        stop_netd(proc)
        try:
            cgroups.remove(base)
        except OSError:
            pass


def test_out_of_descriptors_the_helper_sheds_and_recovers(l2: L2) -> None:
    proc, sock, base = _start_small(l2, "--request-timeout", "2", nofile=48)
    try:
        idle = abuser(sock, "idle", "60")
        assert idle.stdout is not None and idle.stdin is not None
        assert json.loads(idle.stdout.readline())["opened"] == 60
        time.sleep(0.3)
        with pytest.raises(netd.NetdError) as exc:
            netd.request(sock, {"op": "status"})
        assert exc.value.code == "limit" and "out of file descriptors" in str(exc.value), exc.value
        time.sleep(2.5)
        idle.stdin.write("report\n")
        idle.stdin.flush()
        got = json.loads(idle.stdout.readline())
        idle.wait(timeout=10)
        assert got["open"] == 0 and got["other"] == [] and got["descriptors"] > 0 and got["timeout"] > 0, got
        assert got["descriptors"] + got["timeout"] == 60, got
        assert netd.request(sock, {"op": "status"})["verified"]
        assert proc.poll() is None
    finally:
        stop_netd(proc)
        try:
            cgroups.remove(base)
        except OSError:
            pass


def test_limit_flags_are_checked_and_passed_on() -> None:
    from posture.netd import service

    for argv in ([sys.executable, "-m", "posture.netd"], [POSTURE, "netd"]):
        r = subprocess.run([*argv, "--max-per-uid", "0"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 64 and "--max-per-uid must be a positive number" in r.stderr, r.stderr
    limits = Limits(max_per_uid=8, request_timeout=2.5)
    assert limits.argv() == ["--max-per-uid", "8", "--request-timeout", "2.5"]
    assert "-m posture.netd --socket /run/x.sock --max-per-uid 8 --request-timeout 2.5\n" in service._unit("/run/x.sock", limits)


# ------------------------------------------------------------------ the pieces on their own
def test_the_pool_is_fair_between_uids() -> None:
    import threading

    from posture.netd.workers import FairPool

    pool = FairPool(WORKERS)
    order: list[str] = []
    gate = threading.Event()
    try:
        for i in range(20):  # one uid floods the pool with slow jobs ...
            pool.submit(1000, lambda i=i: (gate.wait(5), order.append(f"a{i}")))
        time.sleep(0.2)
        done = threading.Event()
        pool.submit(2000, lambda: (order.append("b"), done.set()))  # ... another uid's job still starts at once
        assert done.wait(2), "the other uid's job waited behind the flood"
        assert order == ["b"] and pool.pending() == 20 - WORKERS // 2
        gate.set()
    finally:
        pool.stop()


@given(st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\', max_size=3), kids, max_size=3),
                    max_leaves=12))
@settings(max_examples=300, deadline=None)
def test_depth_counts_the_nesting_json_text_has(value: object) -> None:
    from posture.netd.requests import depth

    def nesting(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((nesting(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((nesting(x) for x in v.values()), default=0)
        return 0

    assert depth(json.dumps(value).encode()) == nesting(value)
