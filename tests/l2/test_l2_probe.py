"""A probe inside `posture exec --level l2` tries to break every L2 promise, under pipes and under a pty.

Each attack is asserted to fail next to a control that shows the legitimate path works.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from l2env import CREDS, L2, probe_report

from posture.verify import PROBE  # the shipped probe: the one `posture verify` runs
from testnet import INTERNAL, INTERNAL6, PORT, PUBLIC, PUBLIC6

pytestmark = [pytest.mark.root, pytest.mark.l2]

PROTECTED = [".git/hooks/pre-commit", ".envrc", ".vscode/tasks.json", ".mcp.json", ".git/config", ".idea/workspace.xml"]
DENIED = ("EPERM", "EACCES")


def _config(l2: L2, project: Path) -> dict:
    return {
        "canary": l2.canary,
        "secret": l2.secret,
        "home": str(l2.home),
        "project": str(project),
        "creds": [str(l2.home / rel) for rel in CREDS],
        "unix": [*l2.host_unix, "/run/dbus/system_bus_socket", "/var/run/docker.sock", "/tmp/.X11-unix/X0"],
        "abstract": l2.abstract,
        "blocked": [*INTERNAL, *INTERNAL6, "10.0.2.2", "127.0.0.1"],
        "blocked_ports": [["10.0.2.2", l2.gw_loopback_port], ["127.0.0.1", l2.gw_loopback_port], ["::1", l2.gw_loopback_port]],
        "public": [PUBLIC, PUBLIC6],
        "port": PORT,
        "timeout": 3,
        "protected": PROTECTED,
    }


@pytest.mark.parametrize("mode", ["pipes", "pty"])
def test_probe_cannot_break_out(l2: L2, mode: str) -> None:
    project = l2.make_project(f"probe-{mode}")
    shutil.copy(PROBE, project / "probe.py")
    subprocess.run(["chown", f"{l2.uid}:{l2.gid}", str(project / "probe.py")], check=True)
    bashrc_before = (l2.home / ".bashrc").read_text()
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--",
                      "python3", "probe.py", json.dumps(_config(l2, project)), cwd=project, tty=mode == "pty")
    report = probe_report(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr

    # credentials and the host home: absent
    assert set(report["creds"].values()) == {"ENOENT"}, report["creds"]
    assert report["canary_hits"] == [], report["canary_hits"]
    assert report["env_hits"] == [], report["env_hits"]

    # no inherited descriptors, no terminal of the user's
    assert report["fds"] == [], report["fd_targets"]
    if mode == "pipes":
        assert report["isatty"] == [False, False, False]
        assert report["dev_tty"] == "ENXIO"
    else:
        assert report["isatty"] == [True, True, True]  # the sandbox's own pty, made inside
        assert report["dev_pts"] and all(n == "ptmx" or n.isdigit() for n in report["dev_pts"])
    for where, results in report["tiocsti"].items():
        for kind, result in results.items():
            assert result in DENIED, (where, kind, result)
    if mode == "pty":
        assert report["tiocsti"], "under a pty the probe must have tried TIOCSTI on its terminal"
    # a terminal the probe opens itself (what `posture verify` tries under pipes): ioctls work, TIOCSTI does not
    own = report["tiocsti_own_pty"]
    assert own["open"] == "ok" and own["control"] == "ok", own
    assert all(own[kind] in DENIED for kind in ("plain", "high_bits", "tioclinux")), own

    # kernel attack surface
    assert report["userns"]["unshare"] in DENIED and report["userns"]["unshare_raw"] in DENIED
    assert report["userns"]["clone3"] in ("ENOSYS", *DENIED)
    assert report["userns"]["unshare_cmd"] != 0
    for call in ("keyctl", "add_key", "ptrace", "process_vm_readv", "fsopen", "open_tree", "mount_setattr"):
        assert report[call] in DENIED, (call, report[call])

    # host sockets
    assert all(r in ("ENOENT", "ECONNREFUSED") for r in report["unix"].values()), report["unix"]
    assert set(report["abstract"].values()) == {"ECONNREFUSED"}, report["abstract"]

    # files the host runs later
    assert (l2.home / ".bashrc").read_text() == bashrc_before
    for rel, result in report["protected_writes"].items():
        assert result in ("EROFS", "EACCES", "EPERM", "EBUSY"), (rel, result)
    assert not (project / ".git/hooks/pre-commit").exists()
    assert not (project / ".vscode").exists(), "a placeholder posture created was left behind"
    assert not (project / ".envrc").exists()
    assert "pwned" not in (project / ".git/config").read_text()

    # controls: the project is writable and git commits work
    assert report["project_write"] == "ok"
    assert (project / "from-sandbox.txt").read_text() == "made inside\n"
    assert report["git_commit"] == 0
    log = subprocess.run(["git", "-c", "safe.directory=*", "log", "--format=%s", "-1"], cwd=project, capture_output=True, text=True).stdout
    assert log.strip() == "from the sandbox"

    # network: internal ranges and the host's loopback refused, the public host answers
    net = report["net"]
    for addr in (*INTERNAL, *INTERNAL6, "10.0.2.2", "127.0.0.1"):
        assert not net[f"{addr}:{PORT}"].startswith("ok"), (addr, net[f"{addr}:{PORT}"])
    for addr in ("10.0.2.2", "127.0.0.1", "::1"):
        assert not net[f"{addr}:{l2.gw_loopback_port}"].startswith("ok"), (addr, net)
    assert net[f"{PUBLIC}:{PORT}"] == f"ok:hello from {PUBLIC}"
    assert net[f"{PUBLIC6}:{PORT}"] == f"ok:hello from {PUBLIC6}"
