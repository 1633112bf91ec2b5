"""posture as the ordinary user posture-test in the ladder's test network: a home, config and L4 key
of its own; every command runs through the real console script in the GW namespace."""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

from ladder.conftest import Ladder
from l4.vps import STANDIN_BIN, l4_config, write_scenario
from support import posture_bin

USER = "posture-test"


class AsUser:
    """posture as posture-test, with a home, config and L4 key of its own."""

    def __init__(self, ladder: Ladder, tmp: Path, extra: list[str] | None = None) -> None:
        pw = pwd.getpwnam(USER)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.ladder = ladder
        self.home = Path(pw.pw_dir) / f"live-{uuid.uuid4().hex[:6]}"
        self.home.mkdir()
        key = self.home / "l4_key"
        shutil.copy(ladder.vps.client_key, key)
        key.chmod(0o600)
        workdir = f"posture-live-{uuid.uuid4().hex[:6]}"
        self.workdir = workdir
        cfg = self.home / ".config" / "posture" / "config.toml"
        cfg.parent.mkdir(parents=True)
        lines = [line.replace(str(ladder.vps.client_key), str(key)) for line in l4_config(ladder.vps, workdir)]
        cfg.write_text("\n".join(['identities = ["posture-test@example.com"]', "[escalation]", 'on_trigger = "escalate"',
                                  "[l2]", f'netd_socket = "{ladder.netd_sock}"', *lines, *(extra or []), ""]))
        self.tailscale = self.home / "tailscale.json"
        write_scenario(self.tailscale, ladder.vps.tailscale_scenario())
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.home)], check=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8", "TERM": "xterm",
                "PATH": f"{STANDIN_BIN}:/usr/local/bin:/usr/bin:/bin", "POSTURE_TEST_TAILSCALE_STATE": str(self.tailscale),
                "XDG_RUNTIME_DIR": "", **extra}

    def posture(self, *args: str, cwd: Path | None = None, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env(**extra).items() if v}
        argv = ["nsenter", f"--net={self.ladder.net.gw_path}", "runuser", "-u", USER, "--", "env", "-i",
                *[f"{k}={v}" for k, v in env.items()], posture_bin(), *args]
        return subprocess.run(argv, cwd=str(cwd or self.home), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def project(self) -> Path:
        repo = self.home / "project"
        repo.mkdir()
        for args in (["init", "-q", "-b", "main"], ["config", "user.email", "posture-test@example.com"], ["config", "user.name", "T"]):
            subprocess.run(["git", *args], cwd=repo, check=True)
        (repo / "README.md").write_text("hello\n")
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(["git", "commit", "-qm", "init"], cwd=repo, check=True)
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(repo)], check=True)
        return repo

    def audit(self) -> list[dict]:
        log = self.home / ".local" / "state" / "posture" / "audit.log"
        return [json.loads(x) for x in log.read_text().splitlines()]

    def cleanup(self) -> None:
        self.posture("down", "--all")
        shutil.rmtree(self.home, ignore_errors=True)
        subprocess.run(["rm", "-rf", str(self.ladder.vps.home / self.workdir)])
