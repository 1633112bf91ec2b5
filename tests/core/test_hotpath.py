"""What `posture exec` does faster gives the same answers as the slower way it replaced."""

from __future__ import annotations

import subprocess
from pathlib import Path

import platformdirs
import pytest

from posture import gitutil, paths
from posture.config import tomlfile
from posture.errors import ConfigError


def _separately(start: Path) -> tuple:
    gitutil._primed.clear()
    gitutil._common_dir.cache_clear()
    gitutil._git_dir.cache_clear()
    top = gitutil.toplevel(start.resolve()) or start.resolve()
    return top, gitutil.common_dir(top), gitutil.git_dir(top), gitutil.project_key(top)


def test_one_rev_parse_gives_what_the_separate_calls_give(user, make_repo, tmp_path: Path) -> None:
    repo = make_repo()
    (repo / "sub").mkdir()
    worktree = tmp_path / "wt"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", str(worktree)], check=True, env=user.env)
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=user.env)
    plain = tmp_path / "plain"
    plain.mkdir()
    for start in (repo, repo / "sub", repo / ".git", repo / ".git" / "refs", worktree, bare, plain):
        gitutil._primed.clear()
        gitutil._common_dir.cache_clear()
        gitutil._git_dir.cache_clear()
        project = gitutil.resolve_project(start)
        fast = (project, gitutil.common_dir(project), gitutil.git_dir(project), gitutil.project_key(project))
        assert fast == _separately(start), start


@pytest.mark.parametrize("env", [{}, {"XDG_STATE_HOME": "/x/state"}, {"XDG_CONFIG_HOME": "relative"}, {"HOME": "relative"},
                                 {"XDG_DATA_HOME": "/d/", "HOME": "/home/u/"}])
def test_xdg_dirs_match_platformdirs(user, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    want = [platformdirs.user_config_dir("posture", appauthor=False), platformdirs.user_state_dir("posture", appauthor=False),
            platformdirs.user_data_dir("posture", appauthor=False)]
    assert [str(paths.config_dir()), str(paths.state_dir()), str(paths.data_dir())] == want


def test_parsed_toml_comes_back_the_same_from_the_cache(user, tmp_path: Path) -> None:
    doc = tmp_path / "doc.toml"
    doc.write_text('a = 1\nb = 1.5\nc = "x"\nd = [true, false]\n[e]\nf = ["g"]\nnan = nan\n')
    first, _ = tomlfile.read_toml(doc)
    assert list((paths.state_dir() / "cache" / "toml").glob("*.json"))
    second, _ = tomlfile.read_toml(doc)
    assert repr(second) == repr(first) and type(second["a"]) is int and type(second["b"]) is float
    dated = tmp_path / "dated.toml"
    dated.write_text("when = 1979-05-27\n")
    assert repr(tomlfile.read_toml(dated)[0]) == repr(tomlfile.read_toml(dated)[0])  # dates are not cached, still parsed
    empty = tmp_path / "empty.toml"
    empty.write_text(" \n\t\n")
    assert tomlfile.read_toml(empty)[0] == {}
    bad = tmp_path / "bad.toml"
    bad.write_text("a = \n")
    with pytest.raises(ConfigError):
        tomlfile.read_toml(bad)
