"""The secrets `posture verify` plants for its probe to look for, and their removal.

Three random needles: a file in a credential path of the user's home (~/.ssh), a file in
another project's agent state (a made-up project under posture's state dir), and a
secret-looking variable in the environment the session is launched from. Everything
planted is removed afterwards, also when the run fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths

ENV_NAME = "POSTURE_VERIFY_SECRET_TOKEN"
# Credential paths of a user's home (home-relative); the probe checks each is absent inside.
CREDENTIAL_PATHS: tuple[str, ...] = (
    ".ssh/id_ed25519", ".ssh/id_ecdsa", ".ssh/id_rsa", ".gnupg/private-keys-v1.d", ".aws/credentials", ".config/gh/hosts.yml",
    ".kube/config", ".netrc", ".docker/config.json", ".password-store", ".config/tailscale", ".git-credentials",
    ".npmrc", ".pypirc", ".cargo/credentials.toml", ".config/gcloud", ".azure",
)


@dataclass
class Canaries:
    """What was planted: the needles, where, and what to undo."""

    cred: str
    state: str
    secret: str
    cred_file: Path
    state_file: Path
    made: list[Path] = field(default_factory=list)  # created directories and files, removed newest first
    saved_env: str | None = None

    def needles(self) -> list[str]:
        """Every string the probe looks for in files."""
        return [self.cred, self.state]


def plant(profile_state_dirs: list[str], profile_name: str) -> Canaries:
    """Plant the three canaries; the caller must `remove` them."""
    tag = uuid.uuid4().hex
    c = Canaries(cred=f"PVCRED{tag}", state=f"PVSTATE{tag}", secret=f"PVSECRET{tag}",
                 cred_file=paths.home_dir() / ".ssh" / f"posture-verify-{tag[:12]}",
                 state_file=Path(), saved_env=os.environ.get(ENV_NAME))
    try:
        _write(c, c.cred_file, f"-----BEGIN OPENSSH PRIVATE KEY-----\n{c.cred}\n-----END OPENSSH PRIVATE KEY-----\n")
        other = paths.state_dir() / "projects" / f"posture-verify-{tag[:12]}"
        rel = profile_state_dirs[0] if profile_state_dirs else ".posture-verify"
        c.state_file = other / profile_name / "home" / rel / "projects" / "-another-project" / "history.jsonl"
        _mkdirs(c, other)
        _write(c, c.state_file, f'{{"another project\'s conversation": "{c.state}"}}\n')
        os.environ[ENV_NAME] = c.secret
    except BaseException:
        remove(c)
        raise
    return c


def _mkdirs(c: Canaries, path: Path) -> None:
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        c.made.append(d)


def _write(c: Canaries, path: Path, text: str) -> None:
    _mkdirs(c, path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    c.made.append(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def remove(c: Canaries) -> None:
    """Undo `plant`: the files, the directories it made, the variable."""
    if c.saved_env is None:
        os.environ.pop(ENV_NAME, None)
    else:
        os.environ[ENV_NAME] = c.saved_env
    for path in reversed(c.made):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
    c.made.clear()
