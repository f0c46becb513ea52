"""Entry point of the MELLA serving application (``serve run serve/config.yaml``).

The logic lives in :mod:`mella.serving.app` (importable from any Ray worker because ``mella`` is
installed); this file only names the application builder for Serve's ``import_path``.
Docs: docs/serving.md.
"""

from mella.serving.app import build_app

__all__ = ["build_app"]
