"""Record the miniweb build's decisions (ids and reasons) as the fixture ``tests/data/miniweb_decisions.tsv``.

    python tests/record_decisions.py            # run before a refactor that must not change behaviour

Uses the same configuration as ``tests/test_build_corpus.py::miniweb_run`` (live crawl of
``../shared/miniweb`` on 127.0.0.1, the job's defaults, seeds only).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: F401  (sys.path for mella)
from conftest import MINIWEB
from helpers import build, decisions
from test_build_corpus import PATIENT
from webserver import serve_directory

FIXTURE = Path(__file__).resolve().parent / "data" / "miniweb_decisions.tsv"

if __name__ == "__main__":
    from mella.runtime import init_ray

    init_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp, serve_directory(MINIWEB) as url:
        build(Path(tmp) / "out", seeds=MINIWEB / "seeds.txt", base_url=url, crawl=PATIENT, models=True)
        lines = decisions(Path(tmp) / "out")
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} decisions -> {FIXTURE}")
