"""Claude Code's PreToolUse hook inside a posture session, run as
`python3 -I -S /run/posture/agent/hook.py` (named in the managed settings posture binds read-only at
/etc/claude-code/managed-settings.json).

It hands the hook's JSON input, as it came on stdin, to posture's report channel
(/run/posture/report.sock, which carries events and verdicts only), and prints what posture answers
in the form Claude Code reads. It fails closed: when the channel cannot be reached or answers
nonsense, the tool call is denied with the reason. It imports only C modules (`_socket`, `sys`):
it runs before every tool call, and `json` or `socket` would cost more than the rest.
"""

import _socket
import sys

REPORT = "/run/posture/report.sock"
TIMEOUT = 60.0


def _quoted(text):
    """`text` as a JSON string (for the fail-closed answer, made without the json module)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def ask(raw):
    """Send the hook input; return (decision, text to print)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(REPORT)
        sock.sendall(b"hook %d\n" % len(raw) + raw)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    decision, _, text = b"".join(chunks).partition(b"\n")
    if decision not in (b"allow", b"deny"):
        raise ValueError("no verdict")
    return decision, text


def main():
    """Read the hook input, print posture's verdict; exit 0 (2 only when nothing could be printed)."""
    try:
        decision, text = ask(sys.stdin.buffer.read())
    except Exception as exc:  # noqa: BLE001 - fail closed
        reason = "posture could not check this tool call (%s: %s); it is refused" % (exc.__class__.__name__, exc)
        decision = b"deny"
        text = ('{"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny", '
                '"permissionDecisionReason": %s}}\n' % _quoted(reason)).encode()
    try:
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    except Exception:  # noqa: BLE001
        return 2 if decision == b"deny" else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
