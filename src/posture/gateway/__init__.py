"""The per-session egress gateway: the agent's own credentials stay outside every level.

Inside, the agent gets per-session sentinels in place of its credentials (same shape, so it
starts) and its API base URL pointing at the gateway; the gateway, a process of the user's
outside the boundary, swaps a sentinel for the real credential only on requests bound for
that credential's hosts.

  sentinel.py   sentinels shaped like the real thing (API keys, OAuth credential files)
  broker.py     what a profile names, found on this host, turned into env, files and a plan
  sources.py    the user config's [credentials.NAME]: a file, a variable or a command, fetched outside
  carry.py      a session's sentinels kept outside (0600), handed to the session an escalation starts
  http1.py      HTTP/1.1 framing read as it streams (heads, content-length and chunked bodies)
  proxy.py      the reverse proxy: check the sentinel, swap it, stream the answer through
  oauth.py      refreshing an OAuth token outside, written back to the user's own file
  service.py    the gateway process (`python -m posture.gateway`), fed its plan on stdin
  launch.py     starting it with a session and stopping it with the session
"""

from __future__ import annotations

INSIDE_PORT = 41959  # the in-netns forwarder of L2/L3 listens on 127.0.0.1:INSIDE_PORT
SOCKET_INSIDE = "/run/posture/gateway.sock"  # where L2 binds the gateway's socket
