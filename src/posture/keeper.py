"""`python -m posture.keeper SESSION READY_FD`: the keeper of a detached session (runner.keeper_main),
started without the CLI framework, so a session is up sooner (typer and the plugin commands cost
about a quarter of a second per process on a slow machine)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the keeper of session argv[0], reporting readiness on fd argv[1] ("-": none)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2:
        print("usage: python -m posture.keeper SESSION [READY_FD|-]", file=sys.stderr)
        return 64
    ready_fd = int(args[1]) if len(args) == 2 and args[1] != "-" else None
    from . import runner

    return runner.keeper_main(args[0], ready_fd)


if __name__ == "__main__":
    sys.exit(main())
