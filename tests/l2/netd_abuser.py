"""The abuser of the network helper's tests: an ordinary user's program (run as `nobody`).

Usage: netd_abuser.py SOCKET MODE [ARG]; modes:
    idle N        open N connections and send nothing; on "report" say what each got
    raw WAIT      send each payload (base64, JSON list on stdin) on its own connection, all at once
    churn T       for T seconds, two processes connect as fast as they can (keeping the backlog full)
    sandboxes K   start K sandboxes (unshare -Urn sleep), print their pids; on "stop" end them
"""

from __future__ import annotations

import base64
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from typing import Any


def exchange(path: str, payload: bytes, wait: float) -> dict[str, Any]:
    """Send `payload` on a connection of its own; the first line that came back, and whether it was closed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    started = time.monotonic()
    try:
        s.connect(path)  # blocking: a full backlog makes a non-blocking unix connect fail with EAGAIN
        s.settimeout(wait)
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        try:
            closed = s.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = True
        line = buf.split(b"\n")[0]
        return {"answer": json.loads(line) if line else None, "closed": closed, "secs": time.monotonic() - started}
    except TimeoutError:
        return {"answer": None, "closed": False, "timeout": True, "secs": time.monotonic() - started}
    finally:
        s.close()


def idle(path: str, n: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        conns.append(s)
    print(json.dumps({"opened": len(conns), "nofile": hard, "highest_fd": max(c.fileno() for c in conns)}), flush=True)
    sys.stdin.readline()
    got: dict[str, Any] = {"per_uid": 0, "timeout": 0, "descriptors": 0, "other": [], "open": 0}
    for s in conns:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            got["open"] += 1
            continue
        except ConnectionResetError:
            data = b""
        text = data.decode(errors="replace")
        if "--max-per-uid" in text:
            got["per_uid"] += 1
        elif "--request-timeout" in text:
            got["timeout"] += 1
        elif "out of file descriptors" in text:
            got["descriptors"] += 1
        else:
            got["other"].append(text[:200])
    print(json.dumps(got), flush=True)


def raw(path: str, wait: float) -> None:
    payloads = [base64.b64decode(p) for p in json.loads(sys.stdin.read())]
    out: list[dict[str, Any] | None] = [None] * len(payloads)

    def one(i: int) -> None:
        out[i] = exchange(path, payloads[i], wait)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out), flush=True)


def churn(path: str, seconds: float) -> None:
    until = time.monotonic() + seconds
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            n = full = 0
            pending = []
            while time.monotonic() < until:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(path)
                    n += 1
                    pending.append(s)
                except BlockingIOError:
                    full += 1
                    s.close()
                if len(pending) >= 256:
                    for p in pending:
                        p.close()
                    pending = []
            os.write(1, (json.dumps({"connects": n, "full": full}) + "\n").encode())
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)


def sandboxes(k: int) -> None:
    own = os.stat("/proc/self/ns/net").st_ino
    procs = [subprocess.Popen(["unshare", "-Urn", "sleep", "300"]) for _ in range(k)]
    deadline = time.monotonic() + 20
    for p in procs:
        while os.stat(f"/proc/{p.pid}/ns/net").st_ino == own and time.monotonic() < deadline:
            time.sleep(0.01)
    print(json.dumps([p.pid for p in procs]), flush=True)
    sys.stdin.readline()
    for p in procs:
        p.kill()
        p.wait()


def main() -> None:
    path, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "idle":
        idle(path, int(arg))
    elif mode == "raw":
        raw(path, float(arg))
    elif mode == "churn":
        churn(path, float(arg))
    elif mode == "sandboxes":
        sandboxes(int(arg))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
