"""The helper's per-session rules after a session: removed in batches, and whether a sandbox has exited.

Listing the `sessions` chain (to find a rule's handle) makes nft walk the whole cgroup tree, so ended
sessions' rules and drop counters are removed by one thread, one listing and one commit for all of
those queued meanwhile, never on the path of a session's cleanup.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable


class Unruler:
    """Removes queued sessions' rules with `remove(keys)` (called with `lock` held), one batch at a time."""

    def __init__(self, remove: Callable[[list[str]], None], lock: threading.Lock, log: Callable[[str], None]) -> None:
        self.remove, self.lock, self.log = remove, lock, log
        self.queue: list[str] = []
        self.running = False
        self.guard = threading.Lock()

    def add(self, key: str) -> None:
        """Queue the rules of session `key`."""
        with self.guard:
            self.queue.append(key)
            if self.running:
                return
            self.running = True
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self.guard:
                keys, self.queue = self.queue, []
                if not keys:
                    self.running = False
                    return
            try:
                with self.lock:
                    self.remove(keys)
            except Exception as exc:  # noqa: BLE001 - logged; the table goes with the helper anyway
                self.log(f"could not remove the rules of {len(keys)} session(s): {exc}")


def exited(pidfd: int) -> bool:
    """True when the process behind `pidfd` has exited (a pidfd polls readable then)."""
    poller = select.poll()
    try:
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
