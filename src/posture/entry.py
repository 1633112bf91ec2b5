"""Console entry point. `posture exec ... -- CMD` and `posture escalate [--session ID] [--to L]
[--reason TEXT]` take a fast path that does not load the CLI framework (typer costs about 45 ms
per call); everything else, and anything unusual on those two (--help, --abort, a typo), goes to
cli/, which gives the same results and errors (the options are declared once, in options.py)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from . import options, report


def parse_exec(args: list[str]) -> dict[str, Any] | None:
    """Parse `exec` arguments; None when anything is unusual (typer then handles it)."""
    if "--" not in args:
        return None
    cut = args.index("--")
    parsed = options.parse(args[:cut], options.EXEC, path=True)
    if parsed is not None:
        parsed["argv"] = args[cut + 1 :]
    return parsed


def parse_escalate(args: list[str]) -> dict[str, Any] | None:
    """Parse `escalate` arguments; None when anything is unusual (--abort, --help: typer handles it)."""
    return options.parse(args, options.ESCALATE, path=False)


def run_exec(parsed: dict[str, Any]) -> int:
    """`posture exec`."""
    from . import runner

    return runner.exec_command(**parsed)


def run_escalate(parsed: dict[str, Any]) -> int:
    """`posture escalate`: print the new session's id, and one line about the move."""
    from . import escalate

    child = escalate.escalate(parsed["session"], parsed["to"], parsed["reason"])
    print(child.id)
    report.say(escalate.moved_line(child))
    return 0


FAST: dict[str, tuple[Callable[[list[str]], dict[str, Any] | None], Callable[[dict[str, Any]], int]]] = {
    "exec": (parse_exec, run_exec),
    "escalate": (parse_escalate, run_escalate),
}


def main(argv: list[str] | None = None) -> None:
    """Run posture with `argv` (default: the process's arguments) and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in FAST and "_POSTURE_COMPLETE" not in os.environ:
        parse, run = FAST[args[0]]
        parsed = parse(args[1:])
        if parsed is not None:
            code = report.guarded(lambda: run(parsed))
            sys.stdout.flush()
            sys.exit(code)
    from .cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
