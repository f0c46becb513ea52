"""The one start-up every ``jobs/*.py`` shares: put ``platform/`` on ``sys.path`` (a checkout without
``pip install -e .``, or a Ray ``--working-dir`` upload) so ``import mella`` works; nothing else.

    import _bootstrap  # noqa: F401  (first import of a job: jobs/ is the script's directory)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = str(ROOT / "platform")
if PLATFORM not in sys.path:
    sys.path.insert(0, PLATFORM)
