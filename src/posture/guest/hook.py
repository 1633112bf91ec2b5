"""Claude Code's PreToolUse hook inside a posture session (standard library only; run as
`python3 -I -S /run/posture/agent/hook.py`, named in the managed settings posture binds
read-only at /etc/claude-code/managed-settings.json).

It reads the hook's JSON from stdin, reports the tool call over posture's report channel
(/run/posture/report.sock, which carries events and verdicts only) and prints posture's
verdict in the form Claude Code reads. It fails closed: when the channel cannot be reached
or answers nonsense, the tool call is denied with the reason.
"""

import json
import socket
import sys

REPORT = "/run/posture/report.sock"
TIMEOUT = 60.0


def verdict_for(hook_input):
    """Ask posture about one tool call; (decision, reason)."""
    message = {
        "type": "tool_call",
        "hook_event": str(hook_input.get("hook_event_name", "PreToolUse")),
        "tool_name": str(hook_input.get("tool_name", "")),
        "tool_input": hook_input.get("tool_input") if isinstance(hook_input.get("tool_input"), dict) else {},
        "tool_use_id": str(hook_input.get("tool_use_id", "")),
    }
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(REPORT)
        sock.sendall(json.dumps(message).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        sock.close()
    answer = json.loads(buf.split(b"\n", 1)[0])
    decision = answer.get("decision")
    if decision not in ("allow", "deny"):
        return "deny", "posture's report channel gave no verdict"
    return decision, str(answer.get("reason", ""))


def main():
    """Read the hook input, print the verdict; exit 0 (exit 2 only when nothing could be printed)."""
    try:
        hook_input = json.loads(sys.stdin.read() or "{}")
        decision, reason = verdict_for(hook_input if isinstance(hook_input, dict) else {})
    except Exception as exc:  # noqa: BLE001 - fail closed
        decision, reason = "deny", f"posture could not check this tool call ({exc.__class__.__name__}: {exc}); it is refused"
    if decision == "allow":
        return 0
    out = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny", "permissionDecisionReason": reason}}
    try:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        sys.stderr.write(reason + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
