"""Thin registration modules for the built-in backends (bwrap, libvirt, tailnet).

Each registers through the same `posture` entry point group as a third-party plugin would,
and loads its package (posture.l2, posture.l3, posture.l4) only when a backend method is
first called: every posture call loads every plugin, and most calls need one level only.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..session import Availability, Backend, Check, Session, SessionRecord


class LazyBackend(Backend):
    """A backend whose name, level and description are known at registration, and whose
    implementation (`module:Class`) is imported on the first call that needs it."""

    def __init__(self, name: str, level: str, description: str, target: str, remote_work: bool = False) -> None:
        self.name, self.level, self.description, self.remote_work = name, level, description, remote_work
        self._target = target
        self._real: Backend | None = None

    @property
    def real(self) -> Backend:
        """The implementation, imported now if it was not yet."""
        if self._real is None:
            module, _, cls = self._target.partition(":")
            self._real = getattr(importlib.import_module(module), cls)()
        return self._real

    def availability(self, settings: Any) -> Availability:
        """See Backend.availability."""
        return self.real.availability(settings)

    def doctor(self, settings: Any) -> list[Check]:
        """See Backend.doctor."""
        return self.real.doctor(settings)

    def setup(self, settings: Any, options: dict[str, Any]) -> list[str]:
        """See Backend.setup."""
        return self.real.setup(settings, options)

    def teardown(self, settings: Any, purge: bool = False) -> list[str]:
        """See Backend.teardown."""
        return self.real.teardown(settings, purge)

    def session(self, record: SessionRecord, settings: Any) -> Session:
        """See Backend.session."""
        return self.real.session(record, settings)
