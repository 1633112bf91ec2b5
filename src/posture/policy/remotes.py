"""Git remotes, normalised to host/owner/repo so ssh and https forms compare equal."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import gitutil

_SCP = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?P<path>(?!//).+)$")


@dataclass(frozen=True)
class Remote:
    """One remote URL of a project and its normalised form."""

    name: str
    url: str
    normalised: str  # "host/owner/repo", or "local:<path>" for a path or file:// URL


def normalise(url: str) -> str:
    """`git@github.com:Me/Repo.git` and `https://github.com/Me/Repo` both become `github.com/me/repo`."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme == "file":
            return f"local:{parts.path}"
        host = (parts.hostname or "").lower()
        path = parts.path
    else:
        m = _SCP.match(url)
        if not m or url.startswith(("/", ".", "~")):
            return f"local:{url}"
        host = m.group("host").lower()
        path = m.group("path")
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{host}/{path.lower()}".rstrip("/")


def project_remotes(project: Path) -> list[Remote]:
    """Every fetch and push URL of every remote of `project`."""
    proc = gitutil.git(project, "config", "--get-regexp", r"^remote\..*\.(url|pushurl)$", check=False)
    remotes = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, _, url = line.partition(" ")
        name = key.split(".", 1)[1].rsplit(".", 1)[0]
        remotes.append(Remote(name, url, normalise(url)))
    return remotes


def matches(normalised: str, globs: list[str]) -> str | None:
    """The first glob (normalised the same way) that matches, or None."""
    for glob in globs:
        pattern = normalise(glob) if ("://" in glob or "@" in glob) else glob.strip("/").lower()
        if pattern.endswith(".git"):
            pattern = pattern[:-4]
        if fnmatch.fnmatchcase(normalised, pattern):
            return glob
    return None
