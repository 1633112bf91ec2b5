"""`posture verify`: posture's promises, tried from inside fresh sessions on this machine.

probe.py is the one probe program (the tests run it too); targets.py picks what the network
checks try; canary.py plants and removes the secrets the probe looks for; promises.py turns
a probe's report into one row per promise; run.py starts the sessions and collects the rows.
"""

from __future__ import annotations

from pathlib import Path

PROBE = Path(__file__).with_name("probe.py")


def probe_source() -> str:
    """The probe program's text (run inside as `python3 -c SOURCE CONFIG`)."""
    return PROBE.read_text()
