"""Best-effort recognition of shell commands that push or publish.

It reads the Bash tool's command the way a shell would split it (`;`, `&&`, `||`, `|`,
newlines, subshells), skips leading `VAR=value`, `env`, `sudo`, `command`, `exec`, `time`,
`nohup`, and looks at the program and its subcommand. A command built at run time (`eval`,
a script file, `$(...)` that makes the word `push`) is not seen: the egress log and the
network modes are the second line.
"""

from __future__ import annotations

import re
import shlex

_SPLIT = re.compile(r"\|\||&&|[;|&\n()`]|\$\(")
_PREFIXES = {"env", "sudo", "command", "exec", "time", "nohup", "nice", "builtin", "xargs"}
# program -> subcommand words that push or publish (a tuple: all of them, in order, among the arguments)
_PUSHES: dict[str, tuple[tuple[str, ...], ...]] = {
    "git": (("push",), ("send-email",), ("svn", "dcommit")),
    "gh": (("pr", "create"), ("pr", "merge"), ("release", "create"), ("repo", "create"), ("gist", "create")),
    "glab": (("mr", "create"), ("mr", "merge")),
    "hg": (("push",),),
    "npm": (("publish",),),
    "pnpm": (("publish",),),
    "yarn": (("publish",), ("npm", "publish")),
    "cargo": (("publish",),),
    "twine": (("upload",),),
    "gem": (("push",),),
    "docker": (("push",),),
    "podman": (("push",),),
    "poetry": (("publish",),),
    "uv": (("publish",),),
    "flit": (("publish",),),
}
# git options that take a value before the subcommand
_GIT_VALUE_OPTS = {"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--exec-path"}


def _words(segment: str) -> list[str]:
    try:
        return shlex.split(segment, comments=True)
    except ValueError:
        return segment.split()


def _program_and_args(words: list[str]) -> tuple[str, list[str]]:
    i = 0
    while i < len(words) and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[i]) or words[i] in _PREFIXES or words[i].startswith("-") and i > 0 and words[i - 1] in _PREFIXES):
        i += 1
    if i >= len(words):
        return "", []
    program = words[i].rsplit("/", 1)[-1]
    return program, words[i + 1 :]


def _subcommand_words(program: str, args: list[str]) -> list[str]:
    if program != "git":
        return [a for a in args if not a.startswith("-")]
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in _GIT_VALUE_OPTS:
            skip = True
            continue
        if not a.startswith("-"):
            out.append(a)
    return out


def push_commands(command: str) -> list[str]:
    """The parts of `command` that would push or publish, e.g. ["git push origin main"]."""
    found = []
    for segment in _SPLIT.split(command):
        program, args = _program_and_args(_words(segment.strip()))
        patterns = _PUSHES.get(program)
        if not patterns:
            continue
        words = _subcommand_words(program, args)
        for pattern in patterns:
            if tuple(words[: len(pattern)]) == pattern:
                found.append(" ".join([program, *args])[:200])
                break
    return found
