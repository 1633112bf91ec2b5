"""Real-world MCP configs: each tool's file in the shape that tool writes, VS Code's JSONC, what the
fingerprint covers, and failing closed on what cannot be read. Plus the JSONC reader's properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posture.digest import sha256
from posture.policy import jsonc, mcp
from support import User

TRUSTED = 'trusted_remotes = ["github.com/me/*"]\nidentities = ["me@example.com"]\n'

# ------------------------------------------------------------------ the JSONC reader

TRICKY = ["//", "/*", "*/", ",]", ",}", ", ]", '"', "\\", "\n", "/", "*", ",", "]", "}", "http://x/y", "a"]
strings = st.one_of(st.text(max_size=12), st.lists(st.sampled_from(TRICKY), max_size=6).map("".join))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), strings,
)
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(strings, kids, max_size=5)), max_leaves=25)

space = st.sampled_from([" ", "\t", "\n", "\r\n", "  "])
line_comment = st.text(max_size=10).filter(lambda s: "\n" not in s and "\r" not in s).map(lambda s: f"//{s}\n")
block_comment = st.text(max_size=10).filter(lambda s: "*/" not in s).map(lambda s: f"/*{s}*/")
filler = st.lists(st.one_of(space, line_comment, block_comment), max_size=3).map("".join)


def render(value, draw) -> str:
    """`value` as JSONC: random comments and whitespace between all tokens, random trailing commas."""
    f = lambda: draw(filler)  # noqa: E731
    if isinstance(value, list):
        items = [f() + render(v, draw) + f() for v in value]
    elif isinstance(value, dict):
        items = [f() + json.dumps(k) + f() + ":" + f() + render(v, draw) + f() for k, v in value.items()]
    else:
        return json.dumps(value, ensure_ascii=draw(st.booleans()))
    trailing = "," + f() if items and draw(st.booleans()) else ""
    body = ",".join(items) + trailing
    return ("[" + body + f() + "]") if isinstance(value, list) else ("{" + body + f() + "}")


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(values, st.data())
def test_any_json_with_comments_and_trailing_commas_parses_to_the_same_value(value, data) -> None:
    text = data.draw(filler) + render(value, data.draw) + data.draw(filler)
    assert jsonc.loads(text) == value


@PROPERTY
@given(values, st.sampled_from([None, 0, 2, "\t"]), st.booleans())
def test_plain_json_reads_the_same_as_json(value, indent, ascii_only) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    assert jsonc.loads(text) == json.loads(text) == value
    assert jsonc.loads(text, comments=False) == value


@PROPERTY
@given(st.lists(strings, min_size=1, max_size=5))
def test_strings_that_look_like_comments_or_trailing_commas_stay_intact(items) -> None:
    text = json.dumps(items)
    assert jsonc.loads(text) == items
    assert jsonc.loads("{" + json.dumps("k//,]") + ": " + text + ",}") == {"k//,]": items}


@PROPERTY
@given(values, st.data())
def test_broken_input_still_fails(value, data) -> None:
    good = render(value, data.draw)
    for bad in (
        good + " /* never closed",
        "[" + good + ",,]",
        "[," + good + "]",
        "{" + json.dumps("k") + " " + good + "}",  # no colon
        good + " " + good,  # two documents
        good[:-1] if isinstance(value, (list, dict)) else "[" + good,  # unclosed
    ):
        with pytest.raises(ValueError):
            jsonc.loads(bad)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('[]{},:"/*\\ \n1a-.etrufnl')), max_size=30))
def test_arbitrary_text_parses_or_raises_value_error_only(text) -> None:
    try:
        result = jsonc.loads(text)
    except ValueError:
        return
    if "/" not in text and "," not in text:
        assert result == json.loads(text)


@pytest.mark.parametrize("bad", ["[,]", "{,}", "[1,,]", '{"a":1,,}', ",", "[1]]", "/", "/* x", "NaN", "[Infinity]",
                                 "{'a': 1}", "{a: 1}", "[1 2]", '"unterminated', "[" * 100_000, "// only a comment"])
def test_truly_broken_jsonc_fails(bad: str) -> None:
    with pytest.raises(ValueError):
        jsonc.loads(bad)


def test_errors_point_at_the_original_line_and_column() -> None:
    text = '{\n  // a comment, with "quotes"\n  "a": 1, /* two\n lines */ "b" 2\n}'
    with pytest.raises(ValueError) as info:
        jsonc.loads(text)
    assert jsonc.describe_error(info.value) == "line 4, column 15: Expecting ':' delimiter"


# ------------------------------------------------------------------ each tool's file, as it writes it

CLAUDE_PROJECT = """{
  "mcpServers": {
    "files": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"],
      "env": {"API_TOKEN": "${API_TOKEN}"}
    },
    "notion": {
      "type": "http",
      "url": "https://mcp.notion.com/mcp",
      "headers": {"Authorization": "Bearer ${NOTION_TOKEN}"}
    },
    "events": {
      "type": "sse",
      "url": "https://mcp.example.com/sse"
    }
  }
}
"""

CURSOR = """{
  "mcpServers": {
    "postgres": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-postgres", "postgresql://localhost/db"],
      "env": {"PGPASSWORD": "secret"},
      "envFile": ".env"
    },
    "linear": {
      "url": "https://mcp.linear.app/sse",
      "headers": {"X-Api-Key": "${env:LINEAR_KEY}"}
    }
  }
}
"""

VSCODE = """// Workspace MCP servers (VS Code: MCP: Add Server)
{
\t"inputs": [
\t\t{
\t\t\t"type": "promptString",
\t\t\t"id": "perplexity-key",
\t\t\t"description": "Perplexity API Key",
\t\t\t"password": true
\t\t},
\t],
\t"servers": {
\t\t/* a local stdio server */
\t\t"perplexity": {
\t\t\t"type": "stdio",
\t\t\t"command": "npx",
\t\t\t"args": ["-y", "server-perplexity-ask"], // the package
\t\t\t"env": {"PERPLEXITY_API_KEY": "${input:perplexity-key}"},
\t\t\t"envFile": "${workspaceFolder}/.env",
\t\t},
\t\t"github": {
\t\t\t"type": "http",
\t\t\t"url": "https://api.githubcopilot.com/mcp/",
\t\t\t"headers": {"Authorization": "Bearer ${input:github-token}"},
\t\t},
\t},
}
"""

CODEX = """model = "o3"

[mcp_servers.docs]
command = "npx"
args = ["-y", "docs-mcp"]
cwd = "/srv/docs"
env = { "DOCS_TOKEN" = "value" }

[mcp_servers.figma]
url = "https://mcp.figma.com/mcp"
bearer_token_env_var = "FIGMA_OAUTH_TOKEN"
http_headers = { "X-Figma-Region" = "us-east-1" }
env_http_headers = { "X-Trace" = "TRACE_ID" }
"""


def _list(user: User, repo: Path) -> dict:
    proc = user.run("mcp", "list", str(repo), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _mcp_rule(user: User, repo: Path) -> dict:
    proc = user.run("explain", str(repo), "--json")
    assert proc.returncode == 0, proc.stderr
    return next(r for r in json.loads(proc.stdout)["rules"] if r["rule"] == "unfamiliar_mcp")


def _approve_all_and_check(user: User, repo: Path) -> None:
    assert _mcp_rule(user, repo)["fired"]
    assert user.run("mcp", "approve", str(repo), "--all").returncode == 0
    rule = _mcp_rule(user, repo)
    assert not rule["fired"], rule["evidence"]


@pytest.mark.parametrize("where,text,expected", [
    (".mcp.json", CLAUDE_PROJECT, {"files": ("npx", None, ["API_TOKEN"]), "notion": (None, "https://mcp.notion.com/mcp", []),
                                   "events": (None, "https://mcp.example.com/sse", [])}),
    (".cursor/mcp.json", CURSOR, {"postgres": ("npx", None, ["PGPASSWORD"]), "linear": (None, "https://mcp.linear.app/sse", [])}),
    (".vscode/mcp.json", VSCODE, {"perplexity": ("npx", None, ["PERPLEXITY_API_KEY"]), "github": (None, "https://api.githubcopilot.com/mcp/", [])}),
])
def test_project_files_in_their_tools_shape_are_listed_and_approvable(user: User, make_repo, where: str, text: str, expected: dict) -> None:
    user.write_config(TRUSTED)
    repo = make_repo(files={where: text})
    listed = _list(user, repo)
    assert listed["unreadable"] == []
    got = {s["name"]: (s["command"], s["url"], s["env"]) for s in listed["servers"]}
    assert got == expected
    assert {s["source"] for s in listed["servers"]} == {where}
    assert all(s["status"] == "unapproved" for s in listed["servers"])
    _approve_all_and_check(user, repo)


def test_user_level_claude_json_in_the_shape_claude_code_writes(user: User, make_repo) -> None:
    user.write_config(TRUSTED)
    repo = make_repo()
    doc = {
        "numStartups": 12, "theme": "dark", "hasCompletedOnboarding": True,
        "mcpServers": {"mail": {"type": "stdio", "command": "mail-mcp", "args": [], "env": {}}},
        "projects": {
            str(repo): {"allowedTools": [], "history": [], "mcpContextUris": [], "enabledMcpjsonServers": [],
                        "mcpServers": {"db": {"type": "http", "url": "http://127.0.0.1:9/mcp", "headers": {"X-Key": "k"}}}},
            "/elsewhere": {"mcpServers": {"other": {"command": "x"}}},
        },
    }
    (user.home / ".claude.json").write_text(json.dumps(doc, indent=2))
    listed = _list(user, repo)
    got = {(s["name"], s["source"]) for s in listed["servers"]}
    assert got == {("mail", "~/.claude.json"), ("db", "~/.claude.json (project)")}
    _approve_all_and_check(user, repo)


def test_codex_config_toml(user: User, make_repo) -> None:
    user.write_config(TRUSTED)
    repo = make_repo()
    (user.home / ".codex").mkdir()
    (user.home / ".codex" / "config.toml").write_text(CODEX)
    found = {s.name: s for s in mcp.discover(repo).servers}
    assert found["docs"].command == "npx" and found["docs"].cwd == "/srv/docs" and found["docs"].env_names == ("DOCS_TOKEN",)
    figma = found["figma"]
    assert figma.url == "https://mcp.figma.com/mcp"
    assert figma.header_names == ("Authorization", "X-Figma-Region", "X-Trace")
    assert figma.env_names == ("FIGMA_OAUTH_TOKEN", "TRACE_ID")
    _approve_all_and_check(user, repo)


# ------------------------------------------------------------------ the fingerprint

def _one(tmp_path: Path, where: str, text: str) -> mcp.McpServer:
    project = tmp_path / "p"
    (project / where).parent.mkdir(parents=True, exist_ok=True)
    (project / where).write_text(text)
    found = mcp.discover(project, home=tmp_path / "nohome")
    assert not found.unreadable and len(found.servers) == 1, found
    return found.servers[0]


def _vscode(server: dict, comment: str = "") -> str:
    return "{" + comment + '"servers": {"s": ' + json.dumps(server) + ",},}"


BASE = {"type": "stdio", "command": "npx", "args": ["-y", "pkg"], "env": {"TOKEN": "a"}, "envFile": "${workspaceFolder}/.env",
        "headers": {"X-Key": "v"}}


def test_fingerprint_covers_what_it_runs_and_reaches_not_secret_values(tmp_path: Path) -> None:
    base = _one(tmp_path, ".vscode/mcp.json", _vscode(BASE)).fingerprint
    same = [
        {**BASE, "env": {"TOKEN": "rotated"}},
        {**BASE, "headers": {"X-Key": "other"}},
        {k: v for k, v in BASE.items() if k != "type"},  # stdio is what a command server is anyway
    ]
    for spec in same:
        assert _one(tmp_path, ".vscode/mcp.json", _vscode(spec, "/* a new comment */")).fingerprint == base, spec
    changed = [
        {**BASE, "command": "bash"},
        {**BASE, "args": ["-y", "pkg", "/home"]},
        {**BASE, "url": "https://evil.test/mcp"},
        {**BASE, "type": "sse"},
        {**BASE, "env": {"TOKEN": "a", "LD_PRELOAD": "/tmp/x.so"}},
        {**BASE, "headers": {"X-Key": "v", "Cookie": "c"}},
        {**BASE, "envFile": "/home/me/.aws/env"},
        {**BASE, "cwd": "/tmp"},
        {**BASE, "headersHelper": "/tmp/print-headers"},
    ]
    prints = {_one(tmp_path, ".vscode/mcp.json", _vscode(spec)).fingerprint for spec in changed}
    assert base not in prints and len(prints) == len(changed)


def test_fingerprint_of_a_plain_server_is_unchanged_so_earlier_approvals_hold(tmp_path: Path) -> None:
    """The formula before this change: command, args, url, env names, header names."""
    spec = {"command": "npx", "args": ["-y", "@mcp/files"], "env": {"API_TOKEN": "x"}}
    legacy = sha256(json.dumps({"command": "npx", "args": ["-y", "@mcp/files"], "url": None, "env": ["API_TOKEN"], "headers": []},
                               sort_keys=True).encode()).hexdigest()
    assert _one(tmp_path, ".mcp.json", json.dumps({"mcpServers": {"s": spec}})).fingerprint == legacy
    assert _one(tmp_path, ".mcp.json", json.dumps({"mcpServers": {"s": {**spec, "type": "stdio"}}})).fingerprint == legacy


def test_changing_a_vscode_server_after_approval_fires_again(user: User, make_repo) -> None:
    user.write_config(TRUSTED)
    repo = make_repo(files={".vscode/mcp.json": VSCODE})
    _approve_all_and_check(user, repo)
    (repo / ".vscode/mcp.json").write_text(VSCODE.replace("${workspaceFolder}/.env", "/home/me/.ssh/env"))
    rule = _mcp_rule(user, repo)
    assert rule["fired"] and "perplexity@.vscode/mcp.json changed since approval" in rule["evidence"]


# ------------------------------------------------------------------ failing closed

def test_broken_vscode_file_fails_closed_and_says_where(user: User, make_repo) -> None:
    user.write_config(TRUSTED)
    repo = make_repo(files={".vscode/mcp.json": '{\n  "servers": {\n    "s": {"command": "npx" /* unclosed\n  }\n}\n'})
    listed = _list(user, repo)
    assert listed["servers"] == []
    assert listed["unreadable"] == [".vscode/mcp.json: not valid JSON with comments (line 3, column 28: unterminated /* comment)"]
    rule = _mcp_rule(user, repo)
    assert rule["fired"] and ".vscode/mcp.json" in rule["evidence"] and "could not be read" in rule["evidence"]
    text = user.run("mcp", "list", str(repo)).stdout
    assert "unreadable .vscode/mcp.json: not valid JSON with comments (line 3" in text


@pytest.mark.parametrize("where", [".mcp.json", ".cursor/mcp.json"])
def test_json_files_stay_strict(user: User, make_repo, where: str) -> None:
    """Claude Code and Cursor define these as JSON: a comment there is what their tools reject too."""
    user.write_config(TRUSTED)
    repo = make_repo(files={where: '{"mcpServers": {"s": {"command": "x"}}, // note\n}'})
    listed = _list(user, repo)
    assert listed["servers"] == [] and listed["unreadable"][0].startswith(f"{where}: not valid JSON (line 1")
    assert _mcp_rule(user, repo)["fired"]


def test_deeply_nested_and_binary_files_fail_closed(user: User, make_repo) -> None:
    user.write_config(TRUSTED)
    repo = make_repo(files={".vscode/mcp.json": "[" * 200_000})
    (repo / ".mcp.json").write_bytes(b"\xff\xfe{}")
    listed = _list(user, repo)
    assert sorted(u.split(":")[0] for u in listed["unreadable"]) == [".mcp.json", ".vscode/mcp.json"]
    assert _mcp_rule(user, repo)["fired"]


def test_broken_codex_and_claude_json_fail_closed(user: User, make_repo) -> None:
    user.write_config(TRUSTED)
    repo = make_repo()
    (user.home / ".claude.json").write_text('{"mcpServers": ')
    (user.home / ".codex").mkdir()
    (user.home / ".codex" / "config.toml").write_text("[mcp_servers.x\n")
    listed = _list(user, repo)
    assert [u.split(":")[0] for u in listed["unreadable"]] == ["~/.claude.json", "~/.codex/config.toml"]
    assert _mcp_rule(user, repo)["fired"]
