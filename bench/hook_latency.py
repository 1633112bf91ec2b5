#!/usr/bin/env python3
"""What posture's live-trigger hook adds to one tool call of Claude Code, side by side with the
same call without a hook.

Claude Code runs a command hook through the shell with the hook's JSON on stdin, and waits for it
before the tool runs. This bench does the same, interleaved: A = `sh -c HOOK` with posture's hook
(guest/hook.py under `python3 -I -S`) against a live report channel whose monitor judges the call
with the real rules (a Bash call that fires nothing, and a WebFetch of an untrusted host that is
denied); B = `sh -c true`, what a call without a hook costs in the same place. Medians in ms.

    bench/hook_latency.py [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "src" / "posture" / "guest" / "hook.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="posture-hookbench-"))
    os.environ.update(HOME=str(work), XDG_STATE_HOME=str(work / "state"), XDG_CONFIG_HOME=str(work / "config"), XDG_RUNTIME_DIR="")
    project = work / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    from posture import plugins
    from posture.session import SessionRecord, SessionStore
    from posture.triggers.channel import ReportServer
    from posture.triggers.monitor import Monitor

    rec = SessionRecord(id="bench-hook", project=str(project), level="l2", backend="bwrap", profile="claude-code")
    SessionStore().save(rec)
    monitor = Monitor(rec, plugins.load_settings(project), kept=False, on_trigger="deny")
    server = ReportServer(work / "report.sock", monitor.judge, lambda why: None)
    server.start()
    # the hook program exactly as the session runs it, its socket path pointed at this server
    hook = work / "hook.py"
    hook.write_text(HOOK.read_text().replace('REPORT = "/run/posture/report.sock"', f"REPORT = {str(server.path)!r}"))
    calls = {
        "Bash ls (allowed)": {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "ls -la"}, "tool_use_id": "t1"},
        "WebFetch stranger (denied)": {"hook_event_name": "PreToolUse", "tool_name": "WebFetch",
                                       "tool_input": {"url": "https://stranger.example/x", "prompt": "p"}, "tool_use_id": "t2"},
    }
    commands = {"no hook": ["sh", "-c", "cat >/dev/null"]}
    for name in calls:
        commands[f"hook: {name}"] = ["sh", "-c", f"/usr/bin/python3 -I -S {hook}"]
    times: dict[str, list[float]] = {k: [] for k in commands}
    try:
        for i in range(args.runs + 3):
            for name, argv in commands.items():
                payload = json.dumps(calls.get(name.removeprefix("hook: "), calls["Bash ls (allowed)"]))
                t0 = time.perf_counter()
                subprocess.run(argv, input=payload, capture_output=True, text=True, check=True)
                if i >= 3:
                    times[name].append(time.perf_counter() - t0)
    finally:
        server.close()
    base = statistics.median(times["no hook"])
    print(f"median of {args.runs} runs each, interleaved, on {os.uname().nodename} ({os.cpu_count()} cpus)")
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = "" if name == "no hook" else f"   (+{1000 * (med - base):.1f} ms per tool call; target <= 30 ms)"
        print(f"  {name:34} {1000 * med:7.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
