"""Sentinels and the broker: the same shape as the real thing, absent stays absent, the base URL
points at the gateway, the user's own base URL becomes the upstream."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gwenv import REAL_KEY, REAL_OAUTH

from posture import profiles
from posture.gateway import INSIDE_PORT, broker, sentinel


def _oauth_file(home: Path) -> dict:
    doc = {"claudeAiOauth": {"accessToken": REAL_OAUTH, "refreshToken": "sk-ant-ort01-" + "F" * 90,
                             "expiresAt": int(time.time() * 1000) + 3600_000, "scopes": ["user:inference"], "subscriptionType": "max"}}
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    (home / ".claude" / ".credentials.json").write_text(json.dumps(doc))
    return doc


def test_sentinel_shape() -> None:
    fake = sentinel.make(REAL_KEY)
    assert fake.startswith("sk-ant-api03-") and len(fake) == len(REAL_KEY) and fake != REAL_KEY
    assert sentinel.make(REAL_KEY) != fake
    assert len(sentinel.make("short")) >= sentinel.MIN_RANDOM


def test_api_key_only(tmp_path: Path) -> None:
    b = broker.substitute(profiles.load("claude-code"), {"ANTHROPIC_API_KEY": REAL_KEY}, tmp_path)
    assert set(b.env) == {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}
    assert b.env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{INSIDE_PORT}"
    assert b.upstream == "https://api.anthropic.com" and b.files == {}
    assert "$ANTHROPIC_AUTH_TOKEN" in b.missing and "~/.claude/.credentials.json" in b.missing
    assert REAL_KEY not in json.dumps(b.env) and REAL_KEY not in repr(b)
    assert b.given() == [{"name": "$ANTHROPIC_API_KEY", "hosts": ["api.anthropic.com"], "refresh": False,
                          "source": "profile default: $ANTHROPIC_API_KEY of your environment"}]


def test_oauth_only(tmp_path: Path) -> None:
    doc = _oauth_file(tmp_path)
    b = broker.substitute(profiles.load("claude-code"), {}, tmp_path)
    assert set(b.env) == {"ANTHROPIC_BASE_URL"}
    inside = json.loads(b.files[".claude/.credentials.json"])["claudeAiOauth"]
    assert inside["expiresAt"] == sentinel.FAR_FUTURE_MS and inside["scopes"] == ["user:inference"]
    assert inside["accessToken"].startswith("sk-ant-oat01-") and len(inside["accessToken"]) == len(REAL_OAUTH)
    assert REAL_OAUTH not in json.dumps(b.files) and doc["claudeAiOauth"]["refreshToken"] not in json.dumps(b.files)
    # only the access token is ever injected; the refresh token's sentinel stands for nothing
    assert [s.sentinel for s in b.swaps] == [inside["accessToken"]]
    assert b.swaps[0].oauth and b.swaps[0].oauth["format"] == "claude-oauth"


def test_nothing_here_nothing_inside(tmp_path: Path) -> None:
    b = broker.substitute(profiles.load("claude-code"), {"ANTHROPIC_BASE_URL": "https://proxy.example"}, tmp_path)
    assert not b.active and b.env == {} and b.files == {}


def test_users_base_url_becomes_upstream(tmp_path: Path) -> None:
    b = broker.substitute(profiles.load("claude-code"), {"ANTHROPIC_API_KEY": REAL_KEY, "ANTHROPIC_BASE_URL": "http://198.51.100.10:8443/"}, tmp_path)
    assert b.upstream == "http://198.51.100.10:8443"
    assert b.swaps[0].hosts == ["198.51.100.10", "api.anthropic.com"]
    assert b.env["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")


def test_codex_base_path(tmp_path: Path) -> None:
    b = broker.substitute(profiles.load("codex"), {"OPENAI_API_KEY": "sk-proj-" + "q" * 60}, tmp_path)
    assert b.env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{INSIDE_PORT}/v1"
    assert b.env["OPENAI_API_KEY"].startswith("sk-proj-")


def test_no_door_nothing_inside(user, tmp_path: Path) -> None:
    """A level with no door to the gateway (a third-party one): neither the credential nor a sentinel enters."""
    _oauth_file(tmp_path)
    b = broker.prepare(profiles.load("claude-code"), {"ANTHROPIC_API_KEY": REAL_KEY}, tmp_path, "s-lx", "l9")
    assert not b.active and b.env == {} and b.files == {} and b.paths == {}
    assert any("no gateway door at l9" in m for m in b.missing)


def test_every_built_in_level_has_a_door(user, tmp_path: Path) -> None:
    for level in ("l2", "l3", "l4"):
        b = broker.prepare(profiles.load("claude-code"), {"ANTHROPIC_API_KEY": REAL_KEY}, tmp_path, f"s-{level}", level)
        assert b.active and b.env["ANTHROPIC_API_KEY"] != REAL_KEY and not any("no gateway door" in m for m in b.missing), level


def test_audit_names_hosts_never_values(user, tmp_path: Path) -> None:
    from gwenv import StandIn, start

    from posture import audit

    _oauth_file(tmp_path)
    b = broker.prepare(profiles.load("claude-code"), {"ANTHROPIC_API_KEY": REAL_KEY}, tmp_path, "s-audit", "l2")
    assert b.active and set(b.paths) == {".claude/.credentials.json"}
    with StandIn() as api:
        gw = start(b, tmp_path / "rt")
        gw.stop()
    text = audit.log_path().read_text()
    assert REAL_KEY not in text and REAL_OAUTH not in text and all(s.sentinel not in text for s in b.swaps)
    rec = [json.loads(line) for line in text.splitlines() if '"gateway.start"' in line][-1]
    assert {c["name"] for c in rec["data"]["credentials"]} == {"$ANTHROPIC_API_KEY", "~/.claude/.credentials.json:claudeAiOauth.accessToken"}
    assert rec["data"]["credentials"][0]["hosts"] == ["api.anthropic.com"]
    del api
