"""L2 backend (bwrap). Under construction: reports itself unavailable until it is built."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..session import Availability, Backend


class BwrapBackend(Backend):
    name = "bwrap"
    level = "l2"

    def availability(self, settings) -> Availability:
        return Availability(False, "the bwrap backend is not built yet", "use another level")

    def session(self, record, view, settings):
        raise NotImplementedError


@hookimpl
def posture_backends() -> list[Backend]:
    """The L2 backend."""
    return [BwrapBackend()]
