"""Errors to exit codes and one line on stderr: the one reporter of both the fast path (entry.py)
and the typer CLI (cli/).

Exit codes (sysexits): a command's own code passes through `exec`; 64 usage or config error;
69 a backend the level needs is unavailable; 70 internal error; 77 refused by policy.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import EX_SOFTWARE, PostureError

INTERRUPTED = 130


def say(text: str) -> None:
    """One line for the user on stderr."""
    print(text, file=sys.stderr)


def internal(exc: BaseException) -> int:
    """Report an unexpected exception as one line (exit 70); POSTURE_DEBUG=1 re-raises it."""
    if os.environ.get("POSTURE_DEBUG"):
        raise exc
    say(f"posture: internal error: {exc.__class__.__name__}: {exc} (fix: rerun with POSTURE_DEBUG=1 for the traceback and report it)")
    return EX_SOFTWARE


def guarded(action: Callable[[], int]) -> int:
    """Run `action`; map posture's errors to their one line and exit code, anything else to 70."""
    try:
        return action()
    except PostureError as exc:
        say(f"posture: {exc.line()}")
        return exc.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - one line, exit 70, details on request
        return internal(exc)
