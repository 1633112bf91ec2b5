"""Installing and removing the network helper: a systemd unit where systemd runs, else a daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .client import DEFAULT_SOCKET, NetdError, request
from .limits import Limits

DEFAULT_TABLE = "posture"
UNIT_PATH = Path("/etc/systemd/system/posture-netd.service")

def _status(path: str) -> dict[str, Any] | None:
    try:
        return request(path, {"op": "status"}, timeout=5)
    except (OSError, ValueError, NetdError):
        return None


def _systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


def _unit(sock_path: str, limits: Limits) -> str:
    flags = "".join(f" {a}" for a in limits.argv())
    return (
        "[Unit]\nDescription=posture network helper (L2 sandbox networking)\nAfter=network.target\n\n"
        "[Service]\n"
        f"ExecStart={sys.executable} -m posture.netd --socket {sock_path}{flags}\n"
        "Delegate=yes\nRestart=on-failure\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def start(sock_path: str, base: str | None = None, table: str = DEFAULT_TABLE, timeout: float = 10.0,
          limits: Limits | None = None) -> list[str]:
    """Make sure a verified helper serves `sock_path` (idempotent); return what was done."""
    limits = limits or Limits()
    done: list[str] = []
    current = _status(sock_path)
    if current and current.get("verified"):
        return [f"network helper already running (pid {current['pid']}, {current['detail']})"]
    if current:
        done += stop(sock_path)
        done.append(f"restarted the network helper: {current.get('detail')}")
    if _systemd():
        UNIT_PATH.write_text(_unit(sock_path, limits))
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", UNIT_PATH.name], check=True)
        subprocess.run(["systemctl", "restart", UNIT_PATH.name], check=True)
        done.append(f"installed and started {UNIT_PATH}")
    else:
        rundir = Path(sock_path).parent
        rundir.mkdir(parents=True, exist_ok=True, mode=0o755)
        log = open(rundir / "netd.log", "ab")
        argv = [sys.executable, "-m", "posture.netd", "--socket", sock_path, "--table", table, "--pidfile", str(rundir / "netd.pid")]
        if base:
            argv += ["--cgroup", base]
        argv += limits.argv()
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
        log.close()
        done.append(f"started the network helper as a daemon (log {rundir / 'netd.log'})")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = _status(sock_path)
        if current and current.get("verified"):
            done.append(f"network helper on {sock_path}: {current['detail']}")
            return done
        time.sleep(0.05)
    raise RuntimeError(f"the network helper did not come up on {sock_path} (see {Path(sock_path).parent / 'netd.log'})")


def stop(sock_path: str, timeout: float = 10.0) -> list[str]:
    """Stop the helper serving `sock_path` and remove the systemd unit if posture installed one."""
    done: list[str] = []
    if _systemd() and UNIT_PATH.exists():
        subprocess.run(["systemctl", "disable", "--now", UNIT_PATH.name], check=False)
        UNIT_PATH.unlink()
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        done.append(f"removed {UNIT_PATH}")
    current = _status(sock_path)
    if current:
        pid = int(current["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.02)
        done.append(f"stopped the network helper (pid {pid})")
    return done

_ = DEFAULT_SOCKET
