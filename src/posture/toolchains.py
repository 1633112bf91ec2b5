"""What the user's own PATH needs inside a view, read-only: the PATH directories that hold
executables and the install trees their executables resolve to.

Symlink chains are followed hop by hop to the real install trees, and every link met on the
way that the view would not already show is recreated inside, so a PATH entry such as
`~/.nix-profile/bin` keeps working at its own path. Known layouts are handled on purpose:
native installers' versions dirs (`~/.local/share/claude/versions/<v>`), nvm
(`~/.nvm/versions/node/<v>`), fnm (`node-versions/<v>`), volta (`~/.volta/tools`), pyenv
(`~/.pyenv`), rustup and cargo (`~/.cargo/bin` plus `~/.rustup/toolchains`), an npm user prefix
(`<prefix>/bin` and `<prefix>/lib/node_modules`, never `<prefix>/etc`), pipx venvs, Go's
`~/go/bin`, Homebrew on Linux, `/opt/<tool>`, and Nix (`/nix/store` whole, read-only; the
profile links `/run/current-system`, `/etc/profiles/per-user`, `~/.nix-profile`, `/etc/static`).
A whole parent (the home, `~/.local`, `/opt`, ...) is never bound, and the credential files a
bound tree holds (credentials.py) are masked.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import credentials
from .errors import Unavailable

NIX_STORE = "/nix/store"
NIXOS_LINKS = ("/bin/sh", "/usr/bin/env")
BREW_PREFIXES = ("/home/linuxbrew/.linuxbrew",)
BROAD = ("/", "/home", "/nix", "/nix/var", "/opt", "/usr", "/var", "/etc", "/run", "/tmp", "/root", "/srv", "/mnt", "/media")
HOME_BROAD = (".local", ".local/share", ".local/state", ".local/lib", ".config", ".cache", "src", "projects", "Documents")
MAX_HOPS = 40
ADD_KEY = "[mounts] ro"
DROP_KEY = "[mounts] drop"


@dataclass
class Tree:
    """A host tree bound read-only at its own path, and why."""

    path: str
    why: str
    entry: str  # the PATH entry that led here
    exe: str = ""  # the executable that led here ("" for the PATH directory itself)


@dataclass
class LeftOut:
    """A PATH entry or tree that stays out of the view, and why."""

    path: str
    why: str
    entry: str = ""
    exe: str = ""


@dataclass
class Toolchains:
    """The toolchain part of a view."""

    path: list[str] = field(default_factory=list)  # the PATH inside, in the user's order
    trees: list[Tree] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (path, target) recreated inside
    masks: list[str] = field(default_factory=list)  # credential paths inside bound trees, hidden
    left_out: list[LeftOut] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)  # the user's PATH as given

    def to_json(self) -> dict[str, Any]:
        """For `explain --json`."""
        return {
            "path": list(self.path),
            "entered": [vars(t) for t in self.trees],
            "left_out": [vars(x) for x in self.left_out],
            "masked": list(self.masks),
            "links": [{"path": p, "target": t} for p, t in self.links],
        }


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _under_any(path: str, parents: Iterable[str]) -> bool:
    return any(_under(path, p) for p in parents)


_MISSING = "\0missing"


def _readlink(path: str, memo: dict[str, str] | None) -> str:
    """The link's target, "" for an existing non-link, _MISSING when absent (memoised per resolve)."""
    if memo is not None and path in memo:
        return memo[path]
    try:
        found = os.readlink(path)
    except OSError as exc:
        found = "" if exc.errno == errno.EINVAL else _MISSING
    if memo is not None:
        memo[path] = found
    return found


def chain(path: str, start: str = "/", memo: dict[str, str] | None = None) -> tuple[str | None, list[tuple[str, str]]]:
    """Follow every symlink of `path` (relative to `start`), hop by hop: (real path or None, links met)."""
    links: list[tuple[str, str]] = []
    todo = [p for p in path.split("/") if p]
    todo.reverse()
    cur = start if not path.startswith("/") else "/"
    hops = 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur) or "/"
            continue
        nxt = cur + name if cur.endswith("/") else cur + "/" + name
        target = _readlink(nxt, memo)
        if target == _MISSING:
            return None, links
        if not target:
            cur = nxt
            continue
        hops += 1
        if hops > MAX_HOPS:
            return None, links
        links.append((nxt, target))
        more = [p for p in target.split("/") if p]
        more.reverse()
        todo += more
        if target.startswith("/"):
            cur = "/"
    return cur, links


def _component_tree(real: str) -> tuple[str, str] | None:
    """The install tree that a path's own components name (versions dirs, venvs, toolchains)."""
    parts = real.split("/")
    for i in range(len(parts) - 2, 0, -1):
        name = parts[i]
        if name == "versions" and parts[i + 1] == "node" and i + 2 < len(parts):
            return "/".join(parts[: i + 3]), "nvm: a node version's prefix"
        if name == "node-versions" and i + 2 < len(parts) and parts[i + 2] == "installation":
            return "/".join(parts[: i + 3]), "fnm: a node version's installation prefix"
        if name in ("versions", "node-versions"):
            return "/".join(parts[: i + 2]), "a versions directory (native installer, pyenv, fnm, ...): the version in use"
        if name == "venvs":
            return "/".join(parts[: i + 2]), "pipx: the tool's virtual environment"
        if name == "toolchains" and i > 0 and parts[i - 1] == ".rustup":
            return "/".join(parts[: i + 2]), "rustup: the toolchain in use"
        if name == "image" and i + 2 < len(parts) and parts[i - 1] == "tools":
            return "/".join(parts[: i + 3]), "volta: the tool version in use"
    return None


def _node_prefix(real: str) -> str | None:
    """The prefix of `real` when it is `<prefix>/lib/node_modules/...` (npm -g with a user prefix)."""
    marker = "/lib/node_modules/"
    if marker in real:
        return real.split(marker, 1)[0]
    return None


def install_trees(real: str, home: str) -> list[tuple[str, str]]:
    """The trees that an executable resolving to `real` needs, with the rule that chose each."""
    if _under(real, NIX_STORE):
        return [(NIX_STORE, "Nix: the store, read-only (store paths refer only to store paths)")]
    for prefix in (*BREW_PREFIXES, os.path.join(home, ".linuxbrew")):
        if _under(real, prefix) and real != prefix:
            top = os.path.join(prefix, os.path.relpath(real, prefix).split("/")[0])
            out = [(top, "Homebrew: the part of the prefix the executable lives in")]
            for sub in ("Cellar", "opt", "lib", "etc"):
                p = os.path.join(prefix, sub)
                if p != top and os.path.isdir(p):
                    out.append((p, f"Homebrew: {sub} (its executables link and load from here)"))
            return out
    named = _component_tree(real)
    if named:
        return [named]
    npm = _node_prefix(real)
    if npm:
        return [(os.path.join(npm, "lib", "node_modules"), "npm -g with a user prefix: its global packages (never <prefix>/etc)")]
    if _under(real, "/opt") and real != "/opt":
        return [("/opt/" + os.path.relpath(real, "/opt").split("/")[0], "/opt: the tool's own directory")]
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "bin":
        prefix = os.path.dirname(parent)
        if os.path.isdir(os.path.join(prefix, "include", "node")) or os.path.isdir(os.path.join(prefix, "lib", "node_modules")):
            return [(prefix, "a node prefix (bin, lib, include)")]
    return []


def _entry_trees(real: str, home: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """Trees that a PATH directory's layout needs beyond itself (proxies and shims)."""
    out: list[tuple[str, str]] = []
    if real.endswith("/.cargo/bin") or real == os.path.join(env.get("CARGO_HOME", "\0"), "bin"):
        rustup = env.get("RUSTUP_HOME") or os.path.join(home, ".rustup")
        for sub in ("toolchains", "settings.toml"):
            p = os.path.join(rustup, sub)
            if os.path.lexists(p):
                out.append((os.path.realpath(p), "rustup: cargo's proxies run the toolchains from here"))
    if real.endswith("/.volta/bin"):
        p = os.path.join(os.path.dirname(real), "tools")
        if os.path.isdir(p):
            out.append((p, "volta: its shims run the tools from here"))
    if real.endswith("/.pyenv/shims") or real.endswith("/.pyenv/bin"):
        out.append((os.path.dirname(real), "pyenv: its shims run libexec/pyenv and versions/"))
    return out


def _shebang(path: str) -> str | None:
    """The absolute interpreter of a script, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    if not words or not words[0].startswith(b"/"):
        return None
    return os.fsdecode(words[0])


@functools.lru_cache(maxsize=4)
def _split_links(paths: tuple[str, ...]) -> tuple[list[str], list[str]]:
    return [p for p in paths if not os.path.islink(p)], [p for p in paths if os.path.islink(p)]


class _Resolver:
    def __init__(self, home: str, system: Sequence[str], extra_ro: Sequence[str], drop: Sequence[str],
                 owned: Sequence[str], env: dict[str, str]) -> None:
        self.home, self.env = home.rstrip("/") or "/", env
        self.system, self.system_links = _split_links(tuple(system))
        self.extra_ro, self.drop = list(extra_ro), list(drop)
        self.owned = [os.path.realpath(p) for p in owned]
        self.out = Toolchains()
        self.trees: dict[str, Tree] = {}
        self.links: dict[str, str] = {}
        self.refused: set[str] = set()
        self.memo: dict[str, str] = {}
        shown = [p.rstrip("/") for p in (*self.system, *self.system_links, *self.extra_ro) if p.rstrip("/")]
        self.shown_exact = set(shown)
        self.shown_prefixes = tuple(p + "/" for p in shown)

    def visible(self, path: str) -> bool:
        """Shown by the view without a tree of ours (system paths, the user's own [mounts] ro)."""
        return path in self.shown_exact or path.startswith(self.shown_prefixes)

    def covered(self, path: str) -> bool:
        return self.visible(path) or _under_any(path, self.trees)

    def refusal(self, tree: str) -> str | None:
        """Why `tree` may not be bound, or None."""
        home = self.home
        if tree in BROAD or _under(home, tree):
            return "a whole parent directory (it holds far more than tools): never bound"
        if tree in {os.path.join(home, rel) for rel in HOME_BROAD}:
            return "a whole parent directory of the home: never bound"
        if credentials.is_credential(tree, home):
            return "a credential location (credentials.py): never bound"
        for owned in self.owned:
            if _under(tree, owned) or _under(owned, tree):
                return "posture's own state: never bound"
        for dropped in self.drop:
            if _under(tree, dropped):
                return f"dropped by {DROP_KEY} ({dropped})"
        return None

    def add_tree(self, path: str, why: str, entry: str, exe: str = "") -> bool:
        """Bind `path` unless it is refused or already shown; False when refused."""
        if self.visible(path) or path in self.trees:
            return True
        why_not = self.refusal(path)
        if why_not:
            if path not in self.refused:
                self.refused.add(path)
                self.out.left_out.append(LeftOut(path, why_not, entry, exe))
            return False
        self.trees[path] = Tree(path, why, entry, exe)
        return True

    def keep_links(self, links: list[tuple[str, str]]) -> None:
        for path, target in links:
            self.links.setdefault(path, target)

    def executable(self, entry: str, real_dir: str, name: str) -> None:
        path = os.path.join(real_dir, name)
        try:
            target = os.readlink(path)
        except OSError:
            target = None
        if target is not None and target.startswith(NIX_STORE + "/") and NIX_STORE in self.trees:
            return  # the store is shown whole
        if target is None:
            if not os.access(path, os.X_OK) or os.path.isdir(path):
                return
            real: str | None = path
            links: list[tuple[str, str]] = []
        else:
            real, links = chain(name, start=real_dir, memo=self.memo)
            if real is None:
                return  # a dangling link stays dangling inside
        assert real is not None
        self.need(entry, name, real, links)
        interp = _shebang(real)
        if interp and not self.covered(interp):
            ireal, ilinks = chain(interp, memo=self.memo)
            if ireal is not None:
                self.need(entry, name, ireal, ilinks)

    def need(self, entry: str, exe: str, real: str, links: list[tuple[str, str]]) -> None:
        """Make `real` (an executable or interpreter) visible, with the links that lead to it."""
        ok = True
        if not self.covered(real):
            trees = install_trees(real, self.home)
            if not trees:
                trees = [(real, "the executable alone (its directory is no install tree posture knows; "
                                f"add one with {ADD_KEY})")]
            for tree, why in trees:
                ok = self.add_tree(tree, why, entry, exe) and ok
        if ok:
            self.keep_links(links)

    def entry(self, entry: str) -> None:
        out = self.out
        if not entry or not entry.startswith("/"):
            out.left_out.append(LeftOut(entry or "(empty)", "a relative PATH entry: never looked up inside", entry))
            return
        if _under_any(entry, self.drop):
            out.left_out.append(LeftOut(entry, f"dropped by {DROP_KEY}", entry))
            return
        real, links = chain(entry, memo=self.memo)
        if real is None or not os.path.isdir(real):
            out.left_out.append(LeftOut(entry, "does not exist (or is not a directory)", entry))
            return
        if _under_any(real, self.drop):
            out.left_out.append(LeftOut(entry, f"resolves to {real}, dropped by {DROP_KEY}", entry))
            return
        if not self.covered(real):
            trees = install_trees(real, self.home) or [(real, "a PATH directory")]
            ok = True
            for tree, why in trees:
                ok = self.add_tree(tree, why if tree != real else "a PATH directory", entry) and ok
            if not ok:
                return
            for tree, why in _entry_trees(real, self.home, self.env):
                self.add_tree(tree, why, entry)
        self.keep_links(links)
        if entry not in out.path:
            out.path.append(entry)
        if self.visible(real) or _under(real, NIX_STORE):
            return  # system dirs come whole; a store path refers only to the store
        try:
            names = sorted(os.listdir(real))
        except OSError:
            return
        for name in names:
            self.executable(entry, real, name)

    def finish(self) -> Toolchains:
        out = self.out
        paths = sorted(self.trees)
        kept: list[str] = []
        for p in paths:
            if not any(_under(p, k) for k in kept):
                kept.append(p)
        out.trees = [self.trees[p] for p in kept]
        shown = [*kept]
        out.links = [(p, t) for p, t in sorted(self.links.items()) if not self.visible(p) and not _under_any(p, shown)]
        masks: list[str] = []
        for tree in [*kept, *self.extra_ro]:
            if tree == NIX_STORE:
                continue
            for m in credentials.in_tree(tree, self.home):
                if os.path.islink(m):  # a link: hide what it names when that is shown, else it dangles inside
                    m = os.path.realpath(m)
                    if not _under_any(m, shown) and not _under_any(m, self.extra_ro):
                        continue
                if m not in masks:
                    masks.append(m)
        out.masks = masks
        return out


def resolve(user_path: str, home: str, system: Sequence[str], extra_ro: Sequence[str] = (), drop: Sequence[str] = (),
            owned: Sequence[str] = (), env: dict[str, str] | None = None) -> Toolchains:
    """Decide the toolchain part of a view from the user's PATH (`user_path`, colon-separated).

    `system`: host paths the view shows anyway; `extra_ro`: the user's `[mounts] ro`; `drop`:
    `[mounts] drop` (user and repo); `owned`: posture's own directories (never bound).
    """
    r = _Resolver(home, system, extra_ro, drop, owned, env or {})
    for sys_link in NIXOS_LINKS:  # NixOS: /bin/sh and /usr/bin/env are links into the store
        target = _readlink(sys_link, r.memo)
        if target.startswith(NIX_STORE + "/"):
            r.add_tree(NIX_STORE, f"Nix: {sys_link} links into the store (NixOS)", "", sys_link)
    r.out.looked = user_path.split(":")
    for entry in r.out.looked:
        r.entry(entry.rstrip("/") if entry not in ("", "/") else entry)
    return r.finish()


def for_settings(settings: Any, host_env: dict[str, str], home: str, system: Sequence[str]) -> Toolchains:
    """`resolve` for a view: the host's PATH, the user's `[mounts] ro` and `[mounts] drop`, posture's own dirs."""
    from . import paths

    return resolve(host_env.get("PATH", ""), home, system, settings.mounts_ro, getattr(settings, "mounts_drop", []),
                   [str(p) for p in paths.posture_owned_dirs()], host_env)


def find(command: str, tc: Toolchains, system: Sequence[str], extra_ro: Sequence[str] = ()) -> str | None:
    """Where `command` is found inside a view with toolchains `tc` (host path), or None."""
    shown = [*system, *extra_ro, *(t.path for t in tc.trees)]
    candidates = [command] if "/" in command else [os.path.join(d, command) for d in tc.path]
    for cand in candidates:
        if not os.access(cand, os.X_OK) or os.path.isdir(cand):
            continue
        real, _ = chain(cand)
        if real is not None and _under_any(real, shown):
            return cand
    return None


def require(command: str, tc: Toolchains, system: Sequence[str], extra_ro: Sequence[str] = ()) -> str:
    """`find`, or Unavailable (exit 69) naming where posture looked and the key that adds a path."""
    found = find(command, tc, system, extra_ro)
    if found:
        return found
    on_host = shutil.which(command, path=":".join(tc.looked)) if "/" not in command else None
    where = ", ".join(tc.path) or "(no PATH entry)"
    host = ""
    if on_host:
        real = os.path.realpath(on_host)
        hits = sorted((x for x in tc.left_out if _under(real, x.path) or _under(on_host, x.path)), key=lambda x: -len(x.path))
        why = hits[0].why if hits else "its install tree is not in the view"
        host = f"; on your PATH it is {on_host} ({why})"
    return _raise(command, where, host, on_host)


def _raise(command: str, where: str, host: str, on_host: str | None) -> str:
    hint = os.path.dirname(os.path.realpath(on_host)) if on_host else "/path/to/its/bin"
    raise Unavailable(
        f"the profile's command {command!r} is not in the view (looked in: {where}){host}",
        fix=f'add its directory with {ADD_KEY} = ["{hint}"] in the user config (`posture explain` lists what entered the view)',
    )
