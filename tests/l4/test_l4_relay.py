"""git's transport rides posture's pinned connection through a relay that runs only git's two
services for the one repository it was opened for."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.l4


CODE = r"""
import json, subprocess, sys
from pathlib import Path
from posture.plugins import load_settings
from posture.l4 import ssh, tailscale
from posture.l4.relay import relay

settings = load_settings(Path.cwd())
l4 = ssh.settings_l4(settings)
peer = tailscale.find_peer(l4["host"])
client = ssh.connect(ssh.target_for(l4, peer.ip, peer.dns_name))
bare = l4["workdir"] + "/repos/relaytest.git"
ssh.run_script(client, f"git init -q --bare {bare}")
out = {}
with relay(client, bare) as r:
    env = {**__import__("os").environ, **r.env()}
    gitssh = env["GIT_SSH_COMMAND"].split()
    def run(argv):
        p = subprocess.run([*gitssh, *argv], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return [p.returncode, p.stdout, p.stderr]
    out["shell"] = run(["-p", "2222", "vps", "sh -c 'touch /tmp/posture-relay-escape'"])
    out["other_repo"] = run(["vps", "git-upload-pack '/etc'"])
    out["traversal"] = run(["vps", f"git-upload-pack '{bare}/../../..'"])
    out["injection"] = run(["vps", f"git-upload-pack '{bare}'; touch /tmp/posture-relay-escape"])
    ls = subprocess.run(["git", "ls-remote", f"posture-l4:{bare}"], env=env, capture_output=True, text=True)
    out["control"] = [ls.returncode, ls.stdout, ls.stderr]
    out["errors"] = r.errors
print(json.dumps(out))
"""


def test_relay_runs_only_git_services_of_its_repository(l4) -> None:
    l4.enroll()
    proc = l4.python(CODE)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for case in ("shell", "other_repo", "traversal", "injection"):
        code, _, err = out[case]
        assert code == 128 and "refused remote command" in err, (case, out[case])
    assert out["control"][0] == 0, out["control"]
    assert l4.remote("test", "-e", "/tmp/posture-relay-escape").returncode != 0
    assert len(out["errors"]) == 4
