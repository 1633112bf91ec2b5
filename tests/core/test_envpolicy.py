"""The environment allowlist."""

from posture.envpolicy import build_env, secret_looking

HOST = {
    "TERM": "xterm",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "GITHUB_TOKEN": "ghp_canary",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "MY_API_KEY": "k",
    "MY_COLOR": "blue",
    "SSH_AUTH_SOCK": "/run/agent.sock",
    "DISPLAY": ":0",
    "TS_AUTHKEY": "tskey-canary",
    "HOME": "/home/real",
}


def test_only_allowlisted_names_pass() -> None:
    d = build_env(HOST, ["TERM", "LANG", "LC_*"], [], {"HOME": "/home/sandbox"})
    assert d.env == {"TERM": "xterm", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/home/sandbox"}


def test_secret_names_need_to_be_named_one_by_one() -> None:
    d = build_env(HOST, ["MY_*", "AWS_*", "GITHUB_TOKEN"], [], {})
    assert "MY_COLOR" in d.env and "GITHUB_TOKEN" in d.env
    assert "MY_API_KEY" not in d.env and "AWS_ACCESS_KEY_ID" not in d.env
    assert "one by one" in d.refused["MY_API_KEY"]


def test_host_plumbing_never_passes_even_when_named() -> None:
    d = build_env(HOST, ["SSH_AUTH_SOCK", "DISPLAY", "TS_AUTHKEY"], [], {})
    assert "SSH_AUTH_SOCK" not in d.env and "DISPLAY" not in d.env
    assert d.env == {"TS_AUTHKEY": "tskey-canary"}  # named exactly: the user's explicit choice


def test_drop_wins_and_values_are_masked() -> None:
    d = build_env(HOST, ["TERM", "GITHUB_TOKEN"], ["TERM"], {})
    assert "TERM" not in d.env and d.masked() == {"GITHUB_TOKEN": "****"}


def test_secret_looking() -> None:
    for name in ("GITHUB_TOKEN", "AWS_REGION", "DB_PASSWORD", "TS_AUTHKEY", "OPENAI_API_KEY", "MY_SECRET"):
        assert secret_looking(name), name
    for name in ("TERM", "LANG", "EDITOR", "PATH"):
        assert not secret_looking(name), name
