"""Console entry point. `posture exec ... -- CMD` and `posture escalate [--session ID] [--to L]
[--reason TEXT]` take a fast path that does not load the CLI framework (typer costs about 100 ms
per call); everything else, and anything unusual on those two (--help, --abort, a typo), goes to
cli.py, which gives the same results and errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

EXEC_VALUES = {"--level": "level", "--profile": "profile", "--intent": "intent", "--session": "session"}
EXEC_FLAGS = {"--untrusted-input": "untrusted_input"}
ESCALATE_VALUES = {"--session": "session", "--to": "to", "--reason": "reason"}


def parse_options(tokens: list[str], values: dict[str, str], flags: dict[str, str], parsed: dict[str, Any], path: bool) -> dict | None:
    """Fill `parsed` from `--name value`, `--name=value`, flags and (when `path`) one positional PATH;
    None when anything else appears."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if name in values:
            if not eq:
                if i + 1 >= len(tokens):
                    return None
                value = tokens[i + 1]
                i += 1
            parsed[values[name]] = value
        elif token in flags:
            parsed[flags[token]] = True
        elif token.startswith("-") or not path or parsed.get("path") is not None:
            return None
        else:
            parsed["path"] = Path(token)
        i += 1
    return parsed


def parse_exec(args: list[str]) -> dict | None:
    """Parse `exec` arguments; None when anything is unusual (typer then handles it)."""
    if "--" not in args:
        return None
    cut = args.index("--")
    parsed: dict = {"path": None, "level": "auto", "profile": None, "intent": None, "session": None, "untrusted_input": False, "argv": args[cut + 1 :]}
    return parse_options(args[:cut], EXEC_VALUES, EXEC_FLAGS, parsed, path=True)


def parse_escalate(args: list[str]) -> dict | None:
    """Parse `escalate` arguments; None when anything is unusual (--abort, --help: typer handles it)."""
    return parse_options(args, ESCALATE_VALUES, {}, {"session": None, "to": None, "reason": ""}, path=False)


def guarded(action: Callable[[], int]) -> int:
    """Run `action`, mapping posture's errors to their one line and exit code (as cli.py does)."""
    from .errors import EX_SOFTWARE, PostureError

    try:
        return action()
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


def run_exec(parsed: dict) -> int:
    """`posture exec`."""
    from . import runner

    return runner.exec_command(**parsed)


def run_escalate(parsed: dict) -> int:
    """`posture escalate`: print the new session's id, and one line about the move."""
    from . import escalate

    child = escalate.escalate(parsed["session"], parsed["to"], parsed["reason"])
    print(child.id)
    print(f"posture: {child.parent} escalated to {child.id} at {child.level} ({child.backend}); `posture attach --session {child.id}`", file=sys.stderr)
    return 0


FAST = {"exec": (parse_exec, run_exec), "escalate": (parse_escalate, run_escalate)}


def main(argv: list[str] | None = None) -> None:
    """Run posture with `argv` (default: the process's arguments) and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in FAST and "_POSTURE_COMPLETE" not in os.environ:
        parse, run = FAST[args[0]]
        parsed = parse(args[1:])
        if parsed is not None:
            code = guarded(lambda: run(parsed))
            sys.stdout.flush()
            sys.exit(code)
    from .cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
