"""Config loading, validation (every error path) and merging (stricter wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posture import config, plugins
from posture.errors import ConfigError


def load_user(tmp_path: Path, text: str | bytes) -> dict:
    path = tmp_path / "config.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return config.load_user_config(plugins.config_extensions(), path)


def test_missing_user_config_is_empty(tmp_path: Path) -> None:
    assert config.load_user_config(plugins.config_extensions(), tmp_path / "absent.toml") == {}


def test_full_user_config_loads(tmp_path: Path) -> None:
    data = load_user(
        tmp_path,
        'floor = "l3"\nprofile = "shell"\ntrusted_remotes = ["github.com/me/*"]\nidentities = ["Me@Example.com"]\n'
        '[rules]\npush_intent = "l3"\n[env]\npass = ["EDITOR", "MY_*"]\ndrop = ["LANG"]\n'
        '[mounts]\nro = ["~/data"]\nrw = ["/srv/scratch"]\n[network]\nblock = ["203.0.113.7"]\n'
        '[l3]\nuri = "qemu:///system"\nmemory_mib = 1024\naccel = "tcg"\n[l4]\nhost = "vps"\nport = 22\n',
    )
    assert data["floor"] == "l3"
    assert data["network"]["block"] == ["203.0.113.7/32"]
    assert data["mounts"]["ro"][0] == str(Path("~/data").expanduser())


@pytest.mark.parametrize(
    "text,line,key,expect",
    [
        ('floor = "l9"\n', 1, "floor", "expected one of l2, l3, l4"),
        ('floor = 2\n', 1, "floor", "expected one of"),
        ('\nbogus = 1\n', 2, "bogus", "unknown key"),
        ('[env]\npass = "HOME"\n', 2, "env.pass", "expected a list"),
        ('[env]\npass = ["NOT VALID"]\n', 2, "env.pass", "environment variable name"),
        ('[env]\nleak = ["X"]\n', 2, "env.leak", "unknown key"),
        ('[rules]\nsomething = "l4"\n', 2, "rules.something", "unknown key"),
        ('[rules]\npush_intent = "high"\n', 2, "rules.push_intent", "expected one of"),
        ('[network]\nblock = ["10.0.0.0/33"]\n', 2, "network.block", "CIDR"),
        ('[l3]\nmemory_mib = 1\n', 2, "l3.memory_mib", "whole number"),
        ('[l3]\naccel = "hvf"\n', 2, "l3.accel", "auto, kvm or tcg"),
        ('[l4]\nport = 70000\n', 2, "l4.port", "1 to 65535"),
        ('env = "x"\n', 1, "env", "expected a table"),
        ('trusted_remotes = [1]\n', 1, "trusted_remotes", "strings"),
    ],
)
def test_bad_user_config_names_file_line_key_and_expectation(tmp_path: Path, text: str, line: int, key: str, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_user(tmp_path, text)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'config.toml'}:{line}: {key}: "), message
    assert expect in message
    assert "\n" not in message
    assert err.value.exit_code == 64


def test_invalid_toml_and_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_user(tmp_path, 'a = 1\nfloor = \n')
    assert ":2:" in str(err.value) and "invalid TOML" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_user(tmp_path, b'floor = "l2"\n\xff\xfe\n')
    assert ":2:" in str(err.value) and "UTF-8" in str(err.value)


def repo_settings(tmp_path: Path, user_text: str, repo_text: str) -> config.Settings:
    (tmp_path / "user.toml").write_text(user_text)
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    (project / ".posture.toml").write_text(repo_text)
    return plugins.load_settings(project, tmp_path / "user.toml")


def test_repo_cannot_lower_floor_or_rules(tmp_path: Path) -> None:
    s = repo_settings(tmp_path, 'floor = "l3"\n[rules]\npush_intent = "l4"\n', 'floor = "l2"\n[rules]\npush_intent = "l2"\n')
    assert s.floor == "l3"
    assert s.rule_level("push_intent", "l4") == "l4"
    assert ("floor" in dict(s.repo_ignored))


def test_repo_can_raise_rules(tmp_path: Path) -> None:
    s = repo_settings(tmp_path, '[rules]\npush_intent = "l3"\n', '[rules]\npush_intent = "l4"\n')
    assert s.rule_level("push_intent", "l4") == "l4"
    s = repo_settings(tmp_path, "", '[rules]\nuntrusted_input = "l3"\n')
    assert s.rule_level("untrusted_input", "l4") == "l4"  # below the default: no effect


def test_repo_loosening_keys_are_ignored_and_reported(tmp_path: Path) -> None:
    s = repo_settings(
        tmp_path,
        '[env]\npass = ["EDITOR"]\n',
        'profile = "shell"\ntrusted_remotes = ["*"]\nidentities = ["x@y"]\n[env]\npass = ["AWS_SECRET_ACCESS_KEY"]\ndrop = ["EDITOR"]\n'
        '[mounts]\nrw = ["/"]\n[network]\nallow = ["10.0.0.0/8"]\nblock = ["203.0.113.0/24"]\n[l4]\nhost = "evil"\n',
    )
    ignored = dict(s.repo_ignored)
    assert {"profile", "trusted_remotes", "identities", "env.pass", "mounts.rw", "network.allow", "l4"} <= set(ignored)
    assert s.env_pass == ["EDITOR"] and s.env_drop == ["EDITOR"]
    assert s.mounts_rw == [] and s.trusted_remotes == [] and s.identities == []
    assert s.network_block == ["203.0.113.0/24"]
    assert s.backend["l4"] == {}


def test_unknown_repo_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        repo_settings(tmp_path, "", '[deny]\npaths = ["a"]\nfiles = ["b"]\n')
    assert ":3: deny.files: unknown key" in str(err.value)


def test_repo_deny_paths_must_stay_inside(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        repo_settings(tmp_path, "", '[deny]\npaths = ["../outside"]\n')
    assert "deny.paths" in str(err.value) and "inside the project" in str(err.value)


def test_intent_false_cannot_withdraw(tmp_path: Path) -> None:
    s = repo_settings(tmp_path, "", '[intent]\npush = false\n')
    assert s.intent_push is False and "intent.push" in dict(s.repo_ignored)
