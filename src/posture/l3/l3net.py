"""L3 network (placeholder while the boot path is brought up)."""

from __future__ import annotations

from typing import Any


class Attachment:
    def describe(self) -> dict:
        return {}

    def release(self) -> None:
        pass


def wanted(view: Any) -> bool:
    return False


def prepare(settings: Any, view: Any) -> Any:
    return None


def attach(plan: Any, dom: Any, name: str) -> Attachment:
    return Attachment()


def release_described(data: dict) -> None:
    pass


def doctor(settings: Any) -> list:
    return []
