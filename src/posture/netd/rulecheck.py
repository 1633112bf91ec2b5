"""A passed check of the helper's nftables rule, remembered with the ruleset generation it saw.

Listing the table to check it costs ~10 ms of CPU (nft walks /sys/fs/cgroup to print each
rule's cgroup), so the helper does it once and remembers the kernel's ruleset generation
(bumped by every committed change to any table, chain, rule, set or element) and the
cgroup's id. While neither has moved, the ruleset is the one checked.

The helper's own changes to its `sessions` chain also bump the generation. `own_change`
keeps the remembered check across one of them only when that change says it committed
exactly one transaction and the generation moved by exactly one: a change that committed
nothing (a table someone deleted, nothing to remove) while another party committed one
must not pass that party's change off as the helper's.
"""

from __future__ import annotations

from collections.abc import Callable

Generation = Callable[[], "int | None"]


class RememberedCheck:
    """The (generation, cgroup id) of the last passed check, and the rules for keeping it."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.seen: tuple[int, int] | None = None

    def holds(self, cgroup_id: int | None) -> tuple[bool, int | None]:
        """Whether the remembered check still stands for `cgroup_id`, and the generation now (forgetting it if not)."""
        now = self.generation()
        if now is not None and cgroup_id is not None and self.seen == (now, cgroup_id):
            return True, now
        self.seen = None
        return False, now

    def remember(self, before: int | None, cgroup_id: int | None) -> None:
        """Remember a check that passed, when the generation it began at is still the current one."""
        if before is not None and cgroup_id is not None and self.generation() == before:
            self.seen = (before, cgroup_id)

    def own_change(self, change: Callable[[], bool]) -> None:
        """Run one of the helper's own transactions; `change` returns True when it committed exactly one."""
        before = self.generation()
        kept = self.seen is not None and before is not None and self.seen[0] == before
        committed = change()
        after = self.generation()
        if kept and self.seen is not None and before is not None and after is not None:
            if committed and after == before + 1:
                self.seen = (after, self.seen[1])
                return
            if not committed and after == before:
                return
        self.seen = None
