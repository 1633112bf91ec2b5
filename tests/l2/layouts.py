"""Real toolchain layouts for a test user: the files, symlink chains and directory shapes that
installers leave on a developer's machine, each with small shell-script "tools" and with the
credential files that sit beside them in their real places (holding the canary).

Home layouts go into the user's home; the system-wide ones (a fake Nix store and its profile
chains, Homebrew on Linux, /opt, /usr/local) go to their real absolute places, only where
nothing is there yet, and are removed again by `remove()`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NIX_HASH = "0123456789abcdfghijklmnpqrsvwxyz"  # the base-32 alphabet Nix uses for store path hashes


def _hash(seed: str) -> str:
    import hashlib

    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(NIX_HASH[b % 32] for b in digest[:32])


@dataclass
class Layouts:
    """What was built: the PATH to use, each tool's expected output, the read-only trees and the credentials."""

    home: Path
    path: list[str] = field(default_factory=list)  # the user's PATH, in order
    tools: dict[str, str] = field(default_factory=dict)  # command -> the line it prints
    trees: dict[str, str] = field(default_factory=dict)  # layout -> a directory that must be read-only inside
    creds: dict[str, str] = field(default_factory=dict)  # credential path -> layout it sits beside
    created: list[Path] = field(default_factory=list)  # system-wide paths to remove afterwards

    def path_value(self) -> str:
        return ":".join(self.path)

    def remove(self) -> None:
        for p in reversed(self.created):
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)


def _tool(path: Path, name: str) -> str:
    line = f"tool-{name} ok"
    _script(path, f"#!/bin/sh\necho '{line}'\n")
    return line


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def _cred(lay: Layouts, path: Path, layout: str, canary: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"//registry.example/:_authToken=secret material {canary}\n")
    lay.creds[str(path)] = layout


def _system(lay: Layouts, path: Path) -> Path:
    """Claim a system-wide path for this run (it must not exist yet)."""
    if os.path.lexists(path):
        raise RuntimeError(f"{path} exists already: the layouts only build where nothing is")
    lay.created.append(path)
    return path


def _top(lay: Layouts, path: Path) -> None:
    """Record the highest missing ancestor of `path` for removal, then make it."""
    missing = None
    for parent in [path, *path.parents]:
        if not parent.exists():
            missing = parent
    if missing is not None:
        lay.created.append(missing)
    path.mkdir(parents=True, exist_ok=True)


def build(home: Path, user: str, canary: str, tag: str, system: bool = True, only: tuple[str, ...] = ()) -> Layouts:
    """Build every layout (or those named in `only`) for `user` whose home is `home`."""
    lay = Layouts(home=home)
    h = home
    want = lambda name: not only or name in only  # noqa: E731

    if want("native"):  # Anthropic's native installer: ~/.local/bin/<tool> -> ~/.local/share/<tool>/versions/<v>
        v = h / ".local/share/nativetool/versions/2.1.0"
        lay.tools["nativetool"] = _tool(v, "nativetool")
        _link(h / ".local/bin/nativetool", str(v))
        lay.tools["localtool"] = _tool(h / ".local/bin/localtool", "localtool")
        lay.trees["native"] = str(h / ".local/bin")
        _cred(lay, h / ".local/share/keyrings/login.keyring", "native", canary)
        lay.path.append(str(h / ".local/bin"))
    if want("npm"):  # npm -g with a user prefix: <prefix>/bin/x -> ../lib/node_modules/x/...
        prefix = h / ".npm-global"
        lay.tools["npmtool"] = _tool(prefix / "lib/node_modules/npmtool/bin/cli.sh", "npmtool")
        _link(prefix / "bin/npmtool", "../lib/node_modules/npmtool/bin/cli.sh")
        lay.trees["npm"] = str(prefix / "lib/node_modules/npmtool")
        _cred(lay, prefix / "etc/npmrc", "npm", canary)
        _cred(lay, h / ".npmrc", "npm", canary)
        lay.path.append(str(prefix / "bin"))
    if want("nvm"):  # nvm: ~/.nvm/versions/node/<v>/bin, a full node prefix
        prefix = h / ".nvm/versions/node/v20.0.0"
        lay.tools["nvmnode"] = _tool(prefix / "bin/nvmnode", "nvmnode")
        lay.tools["nvmpkg"] = _tool(prefix / "lib/node_modules/nvmpkg/cli.sh", "nvmpkg")
        _link(prefix / "bin/nvmpkg", "../lib/node_modules/nvmpkg/cli.sh")
        (prefix / "include/node").mkdir(parents=True, exist_ok=True)
        (h / ".nvm/nvm.sh").write_text("# nvm\n")
        lay.trees["nvm"] = str(prefix)
        _cred(lay, prefix / "etc/npmrc", "nvm", canary)
        lay.path.append(str(prefix / "bin"))
    if want("fnm"):  # fnm: PATH has a per-shell link to node-versions/<v>/installation
        inst = h / ".local/share/fnm/node-versions/v18.0.0/installation"
        lay.tools["fnmnode"] = _tool(inst / "bin/fnmnode", "fnmnode")
        (inst / "include/node").mkdir(parents=True, exist_ok=True)
        (inst / "lib/node_modules").mkdir(parents=True, exist_ok=True)
        _link(h / ".local/state/fnm_multishells/4242_1700000000000", str(inst))
        lay.trees["fnm"] = str(inst)
        _cred(lay, inst / "etc/npmrc", "fnm", canary)
        lay.path.append(str(h / ".local/state/fnm_multishells/4242_1700000000000/bin"))
    if want("volta"):  # volta: ~/.volta/bin/<tool> -> volta-shim, which runs ~/.volta/tools/image/...
        img = h / ".volta/tools/image/node/16.0.0"
        lay.tools["voltanode"] = _tool(img / "bin/voltanode", "voltanode")
        _script(h / ".volta/bin/volta-shim", '#!/bin/sh\nexec "$HOME/.volta/tools/image/node/16.0.0/bin/$(basename "$0")" "$@"\n')
        _link(h / ".volta/bin/voltanode", "volta-shim")
        (h / ".volta/tools/user").mkdir(parents=True, exist_ok=True)
        (h / ".volta/tools/user/platform.json").write_text('{"node": {"runtime": "16.0.0"}}\n')
        lay.trees["volta"] = str(h / ".volta/tools")
        _cred(lay, img / "etc/npmrc", "volta", canary)
        lay.path.append(str(h / ".volta/bin"))
    if want("pyenv"):  # pyenv: shims run libexec/pyenv, which runs versions/<v>/bin/<tool>
        root = h / ".pyenv"
        lay.tools["pyenvpy"] = _tool(root / "versions/3.12.0/bin/pyenvpy", "pyenvpy")
        _script(root / "libexec/pyenv", '#!/bin/sh\n[ "$1" = exec ] && shift\nv=$(cat "$HOME/.pyenv/version")\nexec "$HOME/.pyenv/versions/$v/bin/$1"\n')
        _link(root / "bin/pyenv", "../libexec/pyenv")
        _script(root / "shims/pyenvpy", '#!/bin/sh\nexec "$HOME/.pyenv/libexec/pyenv" exec pyenvpy "$@"\n')
        (root / "version").write_text("3.12.0\n")
        lay.trees["pyenv"] = str(root / "versions/3.12.0")
        _cred(lay, root / "versions/3.12.0/pip.conf", "pyenv", canary)
        _cred(lay, h / ".pypirc", "pyenv", canary)
        lay.path += [str(root / "shims"), str(root / "bin")]
    if want("cargo"):  # rustup: ~/.cargo/bin holds proxies that run ~/.rustup/toolchains/<t>/bin/<tool>
        tc = h / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu"
        lay.tools["cargotool"] = _tool(tc / "bin/cargotool", "cargotool")
        (h / ".rustup").mkdir(parents=True, exist_ok=True)
        (h / ".rustup/settings.toml").write_text('default_toolchain = "stable-x86_64-unknown-linux-gnu"\n')
        _script(h / ".cargo/bin/cargotool", '#!/bin/sh\nt=$(sed -n \'s/^default_toolchain = "\\(.*\\)"/\\1/p\' "$HOME/.rustup/settings.toml")\n'
                'exec "$HOME/.rustup/toolchains/$t/bin/$(basename "$0")" "$@"\n')
        lay.tools["rgtool"] = _tool(h / ".cargo/bin/rgtool", "rgtool")
        lay.trees["cargo"] = str(tc)
        _cred(lay, h / ".cargo/credentials.toml", "cargo", canary)
        _cred(lay, h / ".cargo/credentials", "cargo", canary)
        lay.path.append(str(h / ".cargo/bin"))
    if want("pipx"):  # pipx: ~/.local/bin/<tool> -> ~/.local/share/pipx/venvs/<tool>/bin/<tool> (a python script)
        venv = h / ".local/share/pipx/venvs/pipxtool"
        _link(venv / "bin/python", "/usr/bin/python3")
        _script(venv / "bin/pipxtool", f"#!{venv}/bin/python\nprint('tool-pipxtool ok')\n")
        lay.tools["pipxtool"] = "tool-pipxtool ok"
        _link(h / ".local/bin/pipxtool", str(venv / "bin/pipxtool"))
        lay.trees["pipx"] = str(venv)
        _cred(lay, venv / "pip.conf", "pipx", canary)
        if str(h / ".local/bin") not in lay.path:
            lay.path.append(str(h / ".local/bin"))
    if want("go"):  # Go: ~/go/bin
        lay.tools["gotool"] = _tool(h / "go/bin/gotool", "gotool")
        lay.trees["go"] = str(h / "go/bin")
        _cred(lay, h / ".git-credentials", "go", canary)
        _cred(lay, h / "go/pkg/mod/cache/download/.netrc", "go", canary)
        lay.path.append(str(h / "go/bin"))
    if system and want("brew"):  # Homebrew on Linux: bin/<tool> -> ../Cellar/<f>/<v>/bin/<tool>
        brew = Path("/home/linuxbrew/.linuxbrew")
        if not Path("/home/linuxbrew").exists():
            _system(lay, Path("/home/linuxbrew"))
        lay.tools["brewtool"] = _tool(brew / "Cellar/brewtool/1.0/bin/brewtool", "brewtool")
        _link(brew / "bin/brewtool", "../Cellar/brewtool/1.0/bin/brewtool")
        lay.trees["brew"] = str(brew / "Cellar/brewtool/1.0")
        _cred(lay, brew / "etc/npmrc", "brew", canary)
        lay.path.append(str(brew / "bin"))
    if system and want("opt"):  # /opt/<tool>/bin
        opt = _system(lay, Path(f"/opt/posture-tc-{tag}"))
        lay.tools["opttool"] = _tool(opt / "bin/opttool", "opttool")
        lay.trees["opt"] = str(opt)
        _cred(lay, opt / "etc/npmrc", "opt", canary)
        _cred(lay, opt / ".aws/credentials", "opt", canary)  # a credential dir inside a tree: masked as a directory
        lay.path.append(str(opt / "bin"))
    if system and want("nix"):
        _nix(lay, user, canary, tag)
    if system and want("usrlocal"):  # /usr/local/bin: in every view already
        tool = _system(lay, Path(f"/usr/local/bin/usrlocaltool-{tag}"))
        lay.tools[tool.name] = _tool(tool, tool.name)
    lay.path += ["/usr/local/bin", "/usr/bin", "/bin"]
    _chown(home, user)
    for p in lay.created:
        subprocess.run(["chmod", "-R", "a+rX", str(p)], check=False)
    return lay


def _nix(lay: Layouts, user: str, canary: str, tag: str) -> None:
    """A fake Nix store with the real shapes: profile generations, /run/current-system, /etc/profiles via /etc/static."""
    store = Path("/nix/store")
    if not Path("/nix").exists():
        _system(lay, Path("/nix"))
    store.mkdir(parents=True, exist_ok=True)
    os.chmod("/nix", 0o755)
    os.chmod(store, 0o755)

    def path(name: str) -> Path:
        p = store / f"{_hash(tag + name)}-{name}"
        lay.created.append(p)
        return p

    pkg = path("nixtool-1.0")
    lay.tools["nixtool"] = _tool(pkg / "bin/nixtool", "nixtool")
    env = path("user-environment")
    _link(env / "bin/nixtool", str(pkg / "bin/nixtool"))
    profiles = Path(f"/nix/var/nix/profiles/per-user/{user}")
    _top(lay, profiles)
    _link(profiles / "profile-7-link", str(env))
    _link(profiles / "profile", "profile-7-link")
    _link(lay.home / ".nix-profile", str(profiles / "profile"))
    lay.trees["nix"] = str(pkg)
    _cred(lay, lay.home / ".config/nix/nix.conf", "nix", canary)

    syspkg = path("nixsystool-2.0")
    lay.tools["nixsystool"] = _tool(syspkg / "bin/nixsystool", "nixsystool")
    swpath = path("system-path")
    _link(swpath / "bin/nixsystool", str(syspkg / "bin/nixsystool"))
    system = path("nixos-system-posture-test-24.05")
    _link(system / "sw", str(swpath))
    _link(_system(lay, Path("/run/current-system")), str(system))

    userpkg = path("nixusertool-3.0")
    lay.tools["nixusertool"] = _tool(userpkg / "bin/nixusertool", "nixusertool")
    userenv = path("user-environment-per-user")
    _link(userenv / "bin/nixusertool", str(userpkg / "bin/nixusertool"))
    etc = path("etc")
    _link(etc / f"etc/profiles/per-user/{user}", str(userenv))
    _link(_system(lay, Path("/etc/static")), str(etc / "etc"))
    profiles_etc = _system(lay, Path("/etc/profiles"))
    _link(profiles_etc / "per-user" / user, f"/etc/static/profiles/per-user/{user}")

    lay.path += [str(lay.home / ".nix-profile/bin"), f"/etc/profiles/per-user/{user}/bin", "/run/current-system/sw/bin"]


def _chown(home: Path, user: str) -> None:
    subprocess.run(["chown", "-R", "--no-dereference", f"{user}:", str(home)], check=True)


def install_claude(home: Path, user: str) -> dict[str, str]:
    """The real Claude Code CLI (installed globally by npm) under the user's npm prefix, with a node
    from an nvm-style prefix: returns the PATH entries and the paths inside."""
    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, check=True).stdout.strip()
    src = Path(root) / "@anthropic-ai"
    if not (src / "claude-code").is_dir():
        raise RuntimeError(f"Claude Code is not installed globally by npm ({src}/claude-code): scripts/install-deps")
    prefix = home / ".npm-global"
    dest = prefix / "lib/node_modules/@anthropic-ai"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        subprocess.run(["cp", "-a", str(src), str(dest)], check=True)  # a copy, never hard links (a chown would reach /usr)
    _link(prefix / "bin/claude", "../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe")
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is missing: scripts/install-deps")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    nvm_bin = home / f".nvm/versions/node/{out}/bin"
    nvm_bin.mkdir(parents=True, exist_ok=True)
    if not (nvm_bin / "node").exists():
        shutil.copy2(os.path.realpath(node), nvm_bin / "node")
    (nvm_bin.parent / "include/node").mkdir(parents=True, exist_ok=True)
    _chown(home / ".nvm", user)
    subprocess.run(["chown", "-h", f"{user}:", str(prefix), str(prefix / "bin"), str(prefix / "bin/claude")], check=True)
    return {"npm_bin": str(prefix / "bin"), "nvm_bin": str(nvm_bin), "wrapper": str(dest / "claude-code/cli-wrapper.cjs"), "node_version": out}
