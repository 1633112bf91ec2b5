"""Live triggers: the rules keep running while a session runs.

Two sources report events: the agent's own tool calls (a PreToolUse hook posture installs in
the agent's managed settings, read-only inside, which reports over a channel that carries
events and verdicts only: channel.py and guest/hook.py) and the project itself, watched
from the host (watch.py: MCP configs, git remotes). The same trigger rules judge them
(policy/rules.py `on_event`); monitor.py decides what happens (`[escalation] on_trigger`:
escalate, deny or log) and records it; escalator.py moves a session up by itself.
"""
