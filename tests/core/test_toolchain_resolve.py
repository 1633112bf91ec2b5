"""toolchains.resolve on the home layouts of tests/l2/layouts.py, built for real in a temporary home
(no root needed): which trees enter, which links are recreated, what is masked, what stays out."""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "l2"))
import layouts  # noqa: E402

from posture import credentials, toolchains  # noqa: E402
from posture.view import ETC_RO, SYSTEM_RO  # noqa: E402

SYSTEM = [p for p in (*SYSTEM_RO, *ETC_RO) if os.path.lexists(p)]


@pytest.fixture()
def lay(tmp_path: Path) -> layouts.Layouts:
    home = tmp_path / "home"
    home.mkdir()
    return layouts.build(home, pwd.getpwuid(os.getuid()).pw_name, "CANARY-core", "core", system=False)


def test_trees_links_and_order(lay: layouts.Layouts) -> None:
    h = str(lay.home)
    path = ":".join([*lay.path[:2], "rel/bin", h, "/nonexistent", *lay.path[2:]])
    tc = toolchains.resolve(path, h, SYSTEM)
    assert tc.path == lay.path
    trees = {t.path for t in tc.trees}
    assert f"{h}/.local/share/nativetool/versions/2.1.0" in trees  # the version in use, not versions/
    assert f"{h}/.npm-global/lib/node_modules" in trees and f"{h}/.npm-global/etc" not in trees
    assert f"{h}/.nvm/versions/node/v20.0.0" in trees
    assert f"{h}/.local/share/fnm/node-versions/v18.0.0/installation" in trees
    assert {f"{h}/.rustup/toolchains", f"{h}/.cargo/bin", f"{h}/.volta/tools", f"{h}/.pyenv"} <= trees
    assert f"{h}/.cargo" not in trees and h not in trees and f"{h}/.local" not in trees
    links = dict(tc.links)
    assert links[f"{h}/.local/state/fnm_multishells/4242_1700000000000"].endswith("/installation")
    out = {x.path: x.why for x in tc.left_out}
    assert "whole parent" in out[h] and "relative" in out["rel/bin"] and "does not exist" in out["/nonexistent"]


def test_credentials_beside_tools_are_masked_or_never_bound(lay: layouts.Layouts) -> None:
    h = str(lay.home)
    tc = toolchains.resolve(lay.path_value(), h, SYSTEM)
    shown = [t.path for t in tc.trees]
    for cred in lay.creds:
        inside = any(cred == t or cred.startswith(t + "/") for t in shown)
        assert not inside or cred in tc.masks, cred
    assert f"{h}/.nvm/versions/node/v20.0.0/etc/npmrc" in tc.masks
    assert f"{h}/.volta/tools/image/node/16.0.0/etc/npmrc" in tc.masks
    assert credentials.is_credential(f"{h}/.ssh/id_ed25519", h) and not credentials.is_credential(f"{h}/.local/bin", h)


def test_drop_and_extra_ro_and_missing_command(lay: layouts.Layouts) -> None:
    h = str(lay.home)
    tc = toolchains.resolve(lay.path_value(), h, SYSTEM, drop=[f"{h}/go/bin"], extra_ro=[f"{h}/.cargo/bin"])
    assert f"{h}/go/bin" not in tc.path and f"{h}/.cargo/bin" in tc.path
    assert f"{h}/.cargo/bin" not in {t.path for t in tc.trees}  # shown by the user's own mount
    assert toolchains.find("npmtool", tc, SYSTEM) == f"{h}/.npm-global/bin/npmtool"
    with pytest.raises(toolchains.Unavailable) as exc:
        toolchains.require("gotool", tc, SYSTEM)
    assert exc.value.exit_code == 69 and "dropped by [mounts] drop" in str(exc.value) and "[mounts] ro" in str(exc.value)


def test_a_link_into_a_credential_dir_is_never_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "tool").write_text("#!/bin/sh\n")
    (home / ".ssh" / "tool").chmod(0o755)
    (home / "bin").mkdir()
    (home / "bin" / "tool").symlink_to(home / ".ssh" / "tool")
    tc = toolchains.resolve(f"{home}/bin:/usr/bin", str(home), SYSTEM)
    assert not any(t.path.startswith(str(home / ".ssh")) for t in tc.trees)
    assert any("credential" in x.why for x in tc.left_out)
