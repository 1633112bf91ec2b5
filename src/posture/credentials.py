"""The one list of credential files and directories that never enter a view.

Shared by the view (a bound toolchain tree never brings one in: posture masks what a tree
would bring along), `posture explain`, and the probe tests. Three kinds of names:

- HOME_FILES / HOME_DIRS: relative to the user's home (`~/.npmrc`, `~/.ssh`, ...);
- PREFIX_FILES: relative to a tool's install prefix (npm's global `<prefix>/etc/npmrc`,
  a Python prefix's `pip.conf`), masked in every bound tree that has them;
- DIR_NAMES: directory names that hold credentials wherever they appear (`.ssh`, `.aws`, ...).
"""

from __future__ import annotations

import functools
import os

HOME_FILES: tuple[str, ...] = (
    ".npmrc", ".yarnrc", ".yarnrc.yml", ".pypirc", ".netrc", ".git-credentials", ".pgpass", ".my.cnf",
    ".cargo/credentials.toml", ".cargo/credentials", ".docker/config.json", ".config/gh/hosts.yml",
    ".config/hub", ".gem/credentials", ".m2/settings.xml", ".m2/settings-security.xml",
    ".gradle/gradle.properties", ".config/pip/pip.conf", ".pip/pip.conf", ".config/nix/nix.conf",
    ".config/git/credentials", ".terraformrc", ".terraform.d/credentials.tfrc.json", ".vault-token",
)
HOME_DIRS: tuple[str, ...] = (
    ".ssh", ".aws", ".gnupg", ".kube", ".password-store", ".azure", ".config/gcloud", ".config/tailscale",
    ".local/share/keyrings", ".docker", ".config/op", ".config/1Password",
)
PREFIX_FILES: tuple[str, ...] = ("etc/npmrc", "etc/pip.conf", "pip.conf", "etc/gitconfig", ".npmrc", ".netrc", ".pypirc")
DIR_NAMES: tuple[str, ...] = (".ssh", ".aws", ".gnupg", ".kube", ".password-store", ".azure", ".docker")


_NAMES = (*PREFIX_FILES, *DIR_NAMES)


@functools.lru_cache(maxsize=8)
def _home_paths(home: str) -> tuple[str, ...]:
    return tuple(os.path.join(home, rel) for rel in (*HOME_FILES, *HOME_DIRS))


def home_paths(home: str) -> list[str]:
    """Every credential path of the list under `home` (whether it exists or not)."""
    return list(_home_paths(home))


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


NO_DESCEND = frozenset({"node_modules", "lib", "lib64", "include", "share", "bin", "sbin", "libexec", "man", "doc",
                        "src", "Cellar", ".git", "site-packages", "__pycache__"})


def in_tree(tree: str, home: str, depth: int = 3) -> list[str]:
    """Credential paths that binding `tree` would bring into a view (those that exist), for masking.

    Looks where the list says credentials live: the home's own credential paths below `tree`,
    and the prefix-relative names and credential directory names in `tree` and in the
    directories below it down to `depth` (not into bin, lib, node_modules, ...: the nested
    prefixes of version managers, e.g. `~/.volta/tools/image/node/<v>/etc/npmrc`).
    """
    prefix = tree.rstrip("/") + "/"
    below_home = prefix.startswith(home.rstrip("/") + "/")
    found = [p for p in _home_paths(home) if p.startswith(prefix) and os.path.lexists(p)] if below_home else []
    if not os.path.isdir(tree) or os.path.islink(tree):
        return found
    base, name = os.path.split(tree.rstrip("/"))
    for rel in PREFIX_FILES:
        if rel.startswith(name + "/"):  # the tree is a prefix's own etc/ (Homebrew binds <prefix>/etc)
            p = os.path.join(base, rel)
            if os.path.lexists(p) and p not in found:
                found.append(p)
    todo = [(tree, 0)]
    while todo:
        d, level = todo.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        names = {e.name for e in entries}
        for rel in _NAMES:
            if rel.split("/", 1)[0] in names:
                p = os.path.join(d, rel)
                if p not in found and os.path.lexists(p):
                    found.append(p)
        if level < depth:
            todo += [(e.path, level + 1) for e in entries
                     if e.name not in NO_DESCEND and e.name not in DIR_NAMES and e.is_dir(follow_symlinks=False)]
    return found


def is_credential(path: str, home: str) -> bool:
    """True when `path` is, or lies inside, a listed credential (home-relative, or under a credential dir name)."""
    if path.startswith(home.rstrip("/") + "/") and any(_under(path, p) for p in _home_paths(home)):
        return True
    parts = path.split("/")
    return any(name in parts for name in DIR_NAMES) or any(path.endswith("/" + rel) for rel in PREFIX_FILES)


def contains_credentials(tree: str, home: str) -> list[str]:
    """Credential paths of the home that lie strictly below `tree` (binding it would need them masked)."""
    return [p for p in home_paths(home) if p != tree and _under(p, tree)]
