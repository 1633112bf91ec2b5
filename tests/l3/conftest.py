"""L3 fixtures (the helpers live in l3env.py, a uniquely named module the tests import)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from l3env import l3  # noqa: E402,F401  (the session fixture)
