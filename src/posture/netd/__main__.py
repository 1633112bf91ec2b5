"""`python -m posture.netd`: run the root network helper in the foreground."""

from __future__ import annotations

import sys

from . import limits
from .client import DEFAULT_SOCKET
from .daemon import DEFAULT_TABLE, serve


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m posture.netd`."""
    import argparse

    parser = argparse.ArgumentParser(prog="posture netd", description="posture's root network helper for L2")
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    parser.add_argument("--cgroup", default=None, help="cgroup (relative to the v2 root) the helper owns")
    parser.add_argument("--table", default=DEFAULT_TABLE)
    parser.add_argument("--no-ipv6", action="store_true")
    parser.add_argument("--pidfile", default=None)
    limits.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        bounds = limits.from_args(args)
    except ValueError as exc:
        print(f"posture netd: {exc}", file=sys.stderr)
        return 64
    try:
        serve(args.socket, args.cgroup, args.table, not args.no_ipv6, args.pidfile, bounds)
    except (PermissionError, RuntimeError) as exc:
        print(f"posture netd: {exc}", file=sys.stderr)
        return 77 if isinstance(exc, PermissionError) else 69
    return 0


if __name__ == "__main__":
    sys.exit(main())
