"""`[l2]` in the user's config."""

from __future__ import annotations

from ..config import checks as c

TABLE = {"netd_socket": c.host_path}
