"""`python -m posture.triggers.escalator SESSION LEVEL REASON`: move a session up because a live
trigger fired (started by the monitor in the session's keeper; a process of its own, because
the escalation ends with stopping that keeper)."""

from __future__ import annotations

import sys

from .. import report


def main(argv: list[str] | None = None) -> int:
    """Escalate session argv[0] to argv[1], with argv[2] as the reason."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m posture.triggers.escalator SESSION LEVEL REASON", file=sys.stderr)
        return 64

    def run() -> int:
        from .. import escalate

        child = escalate.escalate(args[0], args[1], args[2])
        report.say(escalate.moved_line(child))
        return 0

    return report.guarded(run)


if __name__ == "__main__":
    sys.exit(main())
