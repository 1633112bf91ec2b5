"""`[l4]` in the user's config."""

from __future__ import annotations

from ..config import checks as c

TABLE = {
    "host": c.string,
    "user": c.string,
    "port": c.whole(1, 65535),
    "identity": c.host_path,
    "workdir": c.string,
}
