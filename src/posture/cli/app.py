"""The typer application and what every command module shares: output helpers and options."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .. import options
from ..errors import UsageError

app = typer.Typer(
    name="posture",
    help="Run a coding agent at the right rung of an isolation ladder (L2 sandbox, L3 microVM, L4 remote host), "
    "and move a running task up that ladder.\n\nExit codes: the command's own (exec); 64 usage or config error; "
    "69 a backend the level needs is unavailable; 70 internal error; 77 refused by policy.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
mcp_app = typer.Typer(help="List, approve and revoke the MCP servers a project would load.", no_args_is_help=True)
audit_app = typer.Typer(help="Show the audit log, or verify its hash chain.", invoke_without_command=True)
app.add_typer(mcp_app, name="mcp")
app.add_typer(audit_app, name="audit")

# Everything after the first `--` on the command line: the command to run inside.
PASSTHROUGH: list[str] = []

PathArg = typer.Argument(None, help="Project directory (default: the current one; its git top level is used).", show_default=False)


def option(decl: options.Option) -> Any:
    """A typer option from its one declaration in options.py."""
    return typer.Option(decl.default, decl.flag, help=decl.help)


def out(text: str = "") -> None:
    """A line on stdout."""
    print(text)


def err(text: str) -> None:
    """A line on stderr."""
    print(text, file=sys.stderr)


def emit_json(obj: Any) -> None:
    """Stable, indented JSON on stdout."""
    print(json.dumps(obj, indent=2, sort_keys=False))


def request(path: Optional[Path], level: str, profile: Optional[str], intent: Optional[str], untrusted_input: bool) -> Any:
    """The runner's Request for these options (exit 64 on an unknown intent)."""
    from ..runner import Request

    if intent not in (None, "push"):
        raise UsageError(f"--intent {intent!r} is not known", fix="use --intent push")
    return Request(path=path, level=level, profile=profile, intent_push=intent == "push", untrusted_input=untrusted_input)
