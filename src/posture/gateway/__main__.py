"""`python -m posture.gateway`: see service.py."""

import sys

from .service import main

sys.exit(main())
