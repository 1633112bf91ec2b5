"""The user's own toolchains inside L2: every known layout built for real for `posture-test`
(tests/l2/layouts.py), on that user's PATH. From inside: each tool runs, its tree is read-only,
PATH order is kept, and no credential placed beside a tool is readable or findable by a scan of
the whole visible filesystem; the existing probe passes with the layouts present; `explain`
says what entered and why; `[mounts] drop` keeps a tree out; a missing agent is exit 69; and the
real Claude Code CLI runs from an npm user prefix with a node from an nvm-style prefix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import layouts
import pytest
import test_l2_probe as base_probe
from l2env import L2, USER

pytestmark = [pytest.mark.root, pytest.mark.l2]

HERE = Path(__file__).resolve().parent
DENIED = ("EROFS", "EACCES", "EPERM")
EXTRA = ["relative/bin", "/nonexistent/posture-tc/bin"]  # left out of the PATH inside


@pytest.fixture(scope="module")
def lay(l2: L2) -> Iterator[layouts.Layouts]:
    built = layouts.build(l2.home, USER, l2.canary, uuid.uuid4().hex[:8])
    try:
        yield built
    finally:
        built.remove()


def _user_path(l2: L2, lay: layouts.Layouts) -> str:
    entries = list(lay.path)
    entries.insert(3, EXTRA[0])
    entries.insert(6, str(l2.home))  # the home itself: a whole parent, never bound
    entries.insert(9, EXTRA[1])
    return ":".join(entries)


def _project(l2: L2, name: str) -> Path:
    project = l2.make_project(name)
    shutil.copy(HERE / "tc_inside.py", project / "tc_inside.py")
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(project)], check=True)
    return project


def _report(output: str, mark: str = "TC-RESULT:") -> dict:
    for line in output.replace("\r", "").splitlines():
        if mark in line:
            return json.loads(line.split(mark, 1)[1])
    raise AssertionError(f"no {mark} line; output was:\n{output[-4000:]}")


def test_every_layout_runs_read_only_in_order_without_its_credentials(l2: L2, lay: layouts.Layouts) -> None:
    project = _project(l2, "toolchains")
    cfg = {"tools": sorted(lay.tools), "trees": lay.trees, "creds": sorted(lay.creds), "canary": l2.canary}
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "python3", "tc_inside.py", json.dumps(cfg),
                      cwd=project, PATH=_user_path(l2, lay))
    assert proc.returncode == 0, proc.stderr
    r = _report(proc.stdout)

    # PATH inside: the user's, in the same order, the entries not in the view dropped
    assert r["path"].split(":") == lay.path, r["path"]

    # control: every tool of every layout runs, found at its own PATH entry
    for name, line in lay.tools.items():
        t = r["tools"][name]
        assert t["which"] and t["out"] == line, (name, t)

    # every tree and every tool is read-only
    for what, w in r["writes"].items():
        for op in ("new", "append", "chmod"):
            if op in w:
                assert w[op] in DENIED, (what, op, w)
    for layout, tree in lay.trees.items():
        assert r["writes"][layout]["exists"], f"{layout}: {tree} is not in the view"
        assert not (Path(tree) / "posture-was-here").exists() and not (Path(tree).parent / "posture-was-here").exists()

    # no credential beside a tool: neither readable nor found by a scan of everything visible
    for path, fate in r["creds"].items():
        assert l2.canary not in fate, (lay.creds[path], path, fate)
        assert fate in ("ENOENT", "read:", "EACCES"), (path, fate)
    assert r["canary_hits"] == [], r["canary_hits"]


def test_existing_probe_passes_with_the_layouts_on_path(l2: L2, lay: layouts.Layouts, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = L2.env

    def env(self: L2, **extra: str) -> dict[str, str]:
        return plain(self, **{"PATH": _user_path(l2, lay), **extra})

    monkeypatch.setattr(L2, "env", env)
    base_probe.test_probe_cannot_break_out(l2, "pipes")


def test_explain_lists_what_entered_and_what_stayed_out(l2: L2, lay: layouts.Layouts) -> None:
    project = l2.make_project("tc-explain")
    proc = l2.posture("explain", str(project), "--json", PATH=_user_path(l2, lay))
    assert proc.returncode == 0, proc.stderr
    tc = json.loads(proc.stdout)["toolchains"]
    assert tc["path"] == lay.path
    entered = {t["path"]: t for t in tc["entered"]}
    nix = entered["/nix/store"]
    assert nix["entry"] in (str(l2.home / ".nix-profile/bin"), f"/etc/profiles/per-user/{USER}/bin", "/run/current-system/sw/bin")
    native = entered[str(l2.home / ".local/share/nativetool/versions/2.1.0")]
    assert native["entry"] == str(l2.home / ".local/bin") and native["exe"] == "nativetool"
    assert str(l2.home / ".npm-global/lib/node_modules") in entered
    assert not any(p == str(l2.home) or p.startswith(str(l2.home / ".npm-global/etc")) for p in entered)
    out = {x["path"]: x["why"] for x in tc["left_out"]}
    assert "whole parent" in out[str(l2.home)]
    assert "relative" in out["relative/bin"] and "does not exist" in out[EXTRA[1]]
    masked = set(tc["masked"])
    for path, layout in lay.creds.items():
        if layout in ("nvm", "fnm", "volta", "pyenv", "pipx", "brew", "opt") and "/etc/npmrc" in path or path.endswith("pip.conf"):
            assert path in masked, (layout, path, masked)
    assert any(m.startswith("/opt/posture-tc-") and m.endswith("/.aws") for m in masked), masked  # a whole credential dir
    text = l2.posture("explain", str(project), PATH=_user_path(l2, lay)).stdout
    assert "toolchain in (read-only): /nix/store" in text and f"toolchain OUT: {l2.home}" in text
    assert "credential masked:" in text and "[mounts] drop" in text


def test_mounts_drop_keeps_a_tree_out_user_and_repo(l2: L2, lay: layouts.Layouts, tmp_path: Path) -> None:
    project = l2.make_project("tc-drop")
    xdg = l2.home / f"xdg-{uuid.uuid4().hex[:6]}"
    (xdg / "posture").mkdir(parents=True)
    (xdg / "posture" / "config.toml").write_text(f'[mounts]\ndrop = ["{l2.home}/go/bin"]\n')
    (project / ".posture.toml").write_text(f'[mounts]\ndrop = ["{l2.home}/.cargo/bin"]\nro = ["/etc"]\n')
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(xdg), str(project)], check=True)
    try:
        # a repo file may drop, never add: trusted here so its floor does not move the level
        proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "sh", "-c",
                          "for t in gotool cargotool npmtool; do command -v $t || echo missing:$t; done; ls /etc/shadow 2>&1",
                          cwd=project, PATH=_user_path(l2, lay), XDG_CONFIG_HOME=str(xdg))
        assert proc.returncode != 0 or proc.stdout, proc.stderr
        lines = proc.stdout.splitlines()
        assert "missing:gotool" in lines and "missing:cargotool" in lines, proc.stdout + proc.stderr
        assert str(l2.home / ".npm-global/bin/npmtool") in lines  # control: what is not dropped stays
        assert "No such file" in proc.stdout  # the repo's `ro` was ignored
        doc = json.loads(l2.posture("explain", str(project), "--json", PATH=_user_path(l2, lay), XDG_CONFIG_HOME=str(xdg)).stdout)
        out = {x["path"]: x["why"] for x in doc["toolchains"]["left_out"]}
        assert "[mounts] drop" in out[str(l2.home / "go/bin")] and "[mounts] drop" in out[str(l2.home / ".cargo/bin")]
        assert "mounts.ro" in {i["key"] for i in doc["repo_config"]["ignored"]}
    finally:
        shutil.rmtree(xdg, ignore_errors=True)


def test_an_agent_missing_from_the_view_is_69_before_anything_starts(l2: L2, lay: layouts.Layouts) -> None:
    project = l2.make_project("tc-missing")
    xdg = l2.home / f"xdg-{uuid.uuid4().hex[:6]}"
    (xdg / "posture").mkdir(parents=True)
    (xdg / "posture" / "config.toml").write_text(f'[mounts]\ndrop = ["{l2.home}/go/bin"]\n')
    subprocess.run(["chown", "-R", f"{l2.uid}:{l2.gid}", str(xdg)], check=True)
    try:
        for agent in ("posture-no-such-agent", "gotool"):
            proc = l2.posture("up", str(project), "--level", "l2", "--profile", "shell", "--detach", "--", agent,
                              cwd=project, PATH=_user_path(l2, lay), XDG_CONFIG_HOME=str(xdg))
            assert proc.returncode == 69, (agent, proc.returncode, proc.stderr)
            line = proc.stderr.strip().splitlines()[-1]
            assert f"'{agent}' is not in the view" in line and "looked in:" in line and "[mounts] ro" in line, line
            assert str(l2.home / ".local/bin") in line
        assert "dropped by [mounts] drop" in line and f"{l2.home}/go/bin/gotool" in line, line
        status = json.loads(l2.posture("status", "--json", XDG_CONFIG_HOME=str(xdg)).stdout)
        assert not [s for s in status if s["project"] == str(project) and s["status"] in ("starting", "running")], status
    finally:
        shutil.rmtree(xdg, ignore_errors=True)


def test_real_claude_code_from_an_npm_user_prefix_with_nvm_node(l2: L2, lay: layouts.Layouts) -> None:
    where = layouts.install_claude(l2.home, USER)
    project = l2.make_project("tc-claude")
    script = f"command -v claude; command -v node; node --version; claude --version; node {where['wrapper']} --version"
    path = f"{where['npm_bin']}:{where['nvm_bin']}:/usr/bin:/bin"
    proc = l2.posture("exec", str(project), "--level", "l2", "--profile", "shell", "--", "sh", "-c", script, cwd=project, PATH=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{where['npm_bin']}/claude", lines  # not /usr/bin/claude: the user's PATH order
    assert lines[1] == f"{where['nvm_bin']}/node" and lines[2] == where["node_version"], lines
    assert "(Claude Code)" in lines[3] and "(Claude Code)" in lines[4], lines
