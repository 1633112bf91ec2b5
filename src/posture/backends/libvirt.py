"""L3 backend (libvirt). Under construction: reports itself unavailable until it is built."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..session import Availability, Backend


class LibvirtBackend(Backend):
    name = "libvirt"
    level = "l3"

    def availability(self, settings) -> Availability:
        return Availability(False, "the libvirt backend is not built yet", "use another level")

    def session(self, record, view, settings):
        raise NotImplementedError


@hookimpl
def posture_backends() -> list[Backend]:
    """The L3 backend."""
    return [LibvirtBackend()]
