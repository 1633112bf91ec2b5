"""Console entry point. `posture exec ... -- CMD` and `posture escalate [--session ID] [--to L]
[--reason TEXT]` take a fast path that does not load the CLI framework (typer costs about 100 ms
per call); everything else goes to cli.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_VALUE_OPTIONS = {"--level": "level", "--profile": "profile", "--intent": "intent", "--session": "session"}


def parse_exec(args: list[str]) -> dict | None:
    """Parse `exec` arguments (before `--`); None when anything is unusual (typer then handles it)."""
    if "--" not in args:
        return None
    cut = args.index("--")
    head, command = args[:cut], args[cut + 1 :]
    parsed: dict = {"path": None, "level": "auto", "profile": None, "intent": None, "session": None, "untrusted_input": False, "argv": command}
    i = 0
    while i < len(head):
        token = head[i]
        name, eq, value = token.partition("=")
        if name in _VALUE_OPTIONS:
            if not eq:
                if i + 1 >= len(head):
                    return None
                value = head[i + 1]
                i += 1
            parsed[_VALUE_OPTIONS[name]] = value
        elif token == "--untrusted-input":
            parsed["untrusted_input"] = True
        elif token.startswith("-") or parsed["path"] is not None:
            return None
        else:
            parsed["path"] = Path(token)
        i += 1
    return parsed


def _fast_exec(parsed: dict) -> int:
    from .errors import EX_SOFTWARE, PostureError

    try:
        from . import runner

        return runner.exec_command(**parsed)
    except PostureError as exc:
        print(f"posture: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, exit 70, details on request
        if os.environ.get("POSTURE_DEBUG"):
            raise
        print(f"posture: internal error: {exc.__class__.__name__}: {exc} (fix: rerun with POSTURE_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return EX_SOFTWARE


_ESCALATE_OPTIONS = {"--session": "session", "--to": "to", "--reason": "reason"}


def parse_escalate(args: list[str]) -> dict | None:
    """Parse `escalate` arguments; None when anything is unusual (--abort, --help: typer handles it)."""
    parsed: dict = {"session": None, "to": None, "reason": ""}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in _ESCALATE_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        parsed[_ESCALATE_OPTIONS[name]] = value
        i += 1
    return parsed


def _fast_escalate(parsed: dict) -> int:
    """`posture escalate` without the CLI framework (an escalation is timed against a `git push`)."""
    from .errors import EX_SOFTWARE, PostureError

    try:
        from . import escalate

        child = escalate.escalate(parsed["session"], parsed["to"], parsed["reason"])
    except PostureError as exc:
        print(f"posture: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, exit 70, details on request
        if os.environ.get("POSTURE_DEBUG"):
            raise
        print(f"posture: internal error: {exc.__class__.__name__}: {exc} (fix: rerun with POSTURE_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return EX_SOFTWARE
    print(child.id)
    print(f"posture: {child.parent} escalated to {child.id} at {child.level} ({child.backend}); `posture attach --session {child.id}`", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run posture with `argv` (default: the process's arguments) and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["exec"] and "_POSTURE_COMPLETE" not in os.environ:
        parsed = parse_exec(args[1:])
        if parsed is not None:
            code = _fast_exec(parsed)
            sys.stdout.flush()
            sys.exit(code)
    if args[:1] == ["escalate"] and "_POSTURE_COMPLETE" not in os.environ:
        parsed_escalate = parse_escalate(args[1:])
        if parsed_escalate is not None:
            code = _fast_escalate(parsed_escalate)
            sys.stdout.flush()
            sys.exit(code)
    from .cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
