"""L4 backend (tailnet). Under construction: reports itself unavailable until it is built."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..session import Availability, Backend


class TailnetBackend(Backend):
    name = "tailnet"
    level = "l4"

    def availability(self, settings) -> Availability:
        return Availability(False, "the tailnet backend is not built yet", "use another level")

    def session(self, record, view, settings):
        raise NotImplementedError


@hookimpl
def posture_backends() -> list[Backend]:
    """The L4 backend."""
    return [TailnetBackend()]
