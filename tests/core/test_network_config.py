"""`[network] mode` and `allow`: validated, merged (a repo file only tightens), chosen by --network,
and shown by `posture explain`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posture import config, netpolicy, plugins
from posture.errors import ConfigError


def settings(tmp_path: Path, user: str, repo: str = "") -> config.Settings:
    (tmp_path / "config.toml").write_text(user)
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    if repo:
        (project / ".posture.toml").write_text(repo)
    return config.load_settings(project, plugins.config_extensions(), tmp_path / "config.toml")


def test_user_mode_and_allow_load(tmp_path: Path) -> None:
    s = settings(tmp_path, '[network]\nmode = "allowlist"\nallow = ["API.example.com", "*.pythonhosted.org", "pypi.org:443", "203.0.113.0/24"]\n')
    assert s.network_mode == "allowlist"
    assert s.network_allow == ["api.example.com", "*.pythonhosted.org", "pypi.org:443", "203.0.113.0/24"]


@pytest.mark.parametrize("text, expect", [
    ('[network]\nmode = "open"\n', "network.mode: expected public, allowlist or none"),
    ('[network]\nallow = ["exa mple.com"]\n', "network.allow"),
    ('[network]\nallow = ["pypi.org:0"]\n', "bad port"),
])
def test_bad_network_values_are_one_clear_error(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, text)
    assert expect in str(err.value) and ":2:" in str(err.value)


def test_repo_may_only_tighten_the_mode(tmp_path: Path) -> None:
    s = settings(tmp_path, '[network]\nmode = "allowlist"\nallow = ["pypi.org"]\n', '[network]\nmode = "public"\n')
    assert s.network_mode == "allowlist" and "network.mode" in dict(s.repo_ignored)
    s = settings(tmp_path, '', '[network]\nmode = "none"\n')
    assert s.network_mode == "none" and "network.mode = none" in s.repo_asked
    # the user's own --network still cannot loosen below what the repo asked
    assert netpolicy.effective_mode(s.user_network_mode, s.repo_network_mode, "public") == "none"
    assert netpolicy.effective_mode("none", "allowlist", "public") == "allowlist"
    assert netpolicy.effective_mode("public", None, "allowlist") == "allowlist"


def test_repo_allow_only_shrinks(tmp_path: Path) -> None:
    s = settings(tmp_path, '[network]\nmode = "allowlist"\nallow = ["pypi.org", "*.pythonhosted.org"]\n',
                 '[network]\nallow = ["files.pythonhosted.org", "evil.example"]\n')
    assert s.network_allow == ["files.pythonhosted.org"]
    assert "evil.example" in dict(s.repo_ignored)["network.allow"]


def test_explain_shows_mode_allowlist_and_ignored(user, make_repo) -> None:  # type: ignore[no-untyped-def]
    user.write_config('[network]\nmode = "allowlist"\nallow = ["pypi.org"]\n')
    repo = make_repo(files={".posture.toml": '[network]\nmode = "public"\nallow = ["pypi.org", "evil.example"]\n'})
    res = user.run("explain", str(repo), "--json")
    assert res.returncode == 0, res.stderr
    net = json.loads(res.stdout)["network"]
    assert net["mode"] == "allowlist" and net["allow"] == ["pypi.org"]
    assert {i["key"] for i in net["repo_ignored"]} == {"network.mode", "network.allow"}
    text = user.run("explain", str(repo)).stdout
    assert "network: allowlist" in text and "repo IGNORED: network.mode" in text and "no DNS leaves" in text
    forced = json.loads(user.run("explain", str(repo), "--json", "--network", "none").stdout)
    assert forced["network"]["mode"] == "none" and forced["network"]["chosen_by"] == "--network"


def test_bad_network_flag_is_a_usage_error(user, make_repo) -> None:  # type: ignore[no-untyped-def]
    res = user.run("exec", str(make_repo()), "--network", "open", "--", "true")
    assert res.returncode == 64 and "--network 'open' is not a network mode" in res.stderr and "allowlist" in res.stderr


def test_posture_log_shows_the_newest_session_of_the_project(user, make_repo) -> None:  # type: ignore[no-untyped-def]
    from posture.gateway.egresslog import EgressLog
    from posture.session import SessionRecord, SessionStore

    repo = make_repo()
    sessions = user.state / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    store = SessionStore(sessions)
    for sid, created in (("0101-aaaa0001", "2026-01-01T00:00:00Z"), ("0101-aaaa0002", "2026-01-01T00:00:01Z")):
        store.save(SessionRecord(id=sid, project=str(repo), level="l2", backend="bwrap", profile="shell", status="stopped", created=created))
        log = EgressLog(sessions / f"{sid}.egress.jsonl", sid, "l2")
        log.write("pypi.org", 443, "151.101.0.223", "allowed", "pypi.org")
        log.write("evil.example", 443, None, "refused", "mode allowlist", reason="not in the allowlist")
        log.close()
    res = user.run("log", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["session"] for x in lines] == ["0101-aaaa0002"] * 2
    assert set(lines[0]) >= {"time", "session", "level", "dest", "port", "address", "decision", "rule", "source"}
    text = user.run("log", "--session", "0101-aaaa0001", "--follow").stdout  # --follow ends with a stopped session
    assert "allowed  pypi.org:443 -> 151.101.0.223  rule pypi.org  [gateway]" in text
    assert "refused  evil.example:443  rule mode allowlist  [gateway]  (not in the allowlist)" in text
    missing = user.run("log", "--session", "0101-nope")
    assert missing.returncode == 64 and "no session" in missing.stderr
