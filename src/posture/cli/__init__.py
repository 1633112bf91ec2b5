"""The `posture` command line (typer): parses, calls the core, renders; errors go through report.py.

app.py holds the application and shared helpers; sessions.py, policy.py and host.py the commands.
"""

from __future__ import annotations

import sys

import typer

from .. import __version__, report
from ..errors import EX_USAGE
from . import host, policy, sessions, verify  # noqa: F401 - they register their commands on the app
from . import log  # noqa: F401 - `posture log`
from .app import PASSTHROUGH, app

# typer vendors its own click in recent releases: find its exception classes through typer's public ones.
_CLICK_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _version(value: bool) -> None:
    if value:
        print(f"posture {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """posture: an isolation ladder for coding agents."""


def _load_plugin_commands() -> None:
    from .. import plugins

    plugins.manager().hook.posture_commands(app=app)


def _run_click(args: list[str]) -> int:
    """Run the typer app on `args`; map click's own errors (usage, abort, exit) to exit codes."""
    _load_plugin_commands()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="posture", standalone_mode=False)
    except _CLICK_USAGE_ERROR as exc:
        message = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":
            report.say(message)
        else:
            ctx = exc.ctx  # type: ignore[attr-defined]
            where = f" (see `{ctx.command_path} --help`)" if ctx else ""
            report.say(f"posture: {message}{where}")
        return EX_USAGE
    except _CLICK_EXCEPTION as exc:
        report.say(f"posture: {exc.format_message()}")  # type: ignore[attr-defined]
        return EX_USAGE
    except Exception as exc:
        if type(exc).__name__ == "Exit":
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if type(exc).__name__ == "Abort":
            report.say("posture: aborted")
            return report.INTERRUPTED
        raise
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point: split off `-- CMD`, run the command, map errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        cut = args.index("--")
        args, PASSTHROUGH[:] = args[:cut], args[cut + 1 :]
    code = report.guarded(lambda: _run_click(args))
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
