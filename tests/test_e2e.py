"""A new user's loop (issue 14): the demo twice (same funnel, zero requests the second time, a readable
console) and `make e2e` (tiny models → corpus with D_ling → adapters → Serve → Table-3 report)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, job_env
from ports import free_port

pytestmark = [pytest.mark.slow]
PY = sys.executable
#: a Ray log line at INFO: Python logging ("... INFO file.py:12 -- ...") or the C++ core ("[... I 123 123] x.cc:")
RAY_INFO = re.compile(r"(\tINFO |\bINFO \S+\.py:\d+ --|\[[^\]]* I \d+ \d+\] )")


def _demo(out: Path, port: int) -> subprocess.CompletedProcess:
    """What `make demo` runs (python jobs/build_corpus.py), into ``out``, on demo port ``port`` (piped: not a TTY)."""
    proc = subprocess.run(
        [PY, str(ROOT / "jobs" / "build_corpus.py"), "--output", str(out), "--demo-port", str(port)],
        cwd=out.parent,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _requests(proc: subprocess.CompletedProcess) -> int:
    """The demo server's own count of the HTTP requests it served (its last line)."""
    m = re.search(r"^demo web: (\d+) HTTP requests served", proc.stdout, re.M)
    assert m, proc.stdout
    return int(m.group(1))


def test_demo_twice_same_funnel_zero_requests_and_a_readable_console(tmp_path):
    out, port = tmp_path / "mella_out", free_port()
    first = _demo(out, port)
    funnel1 = (out / "funnel.json").read_text()
    second = _demo(out, port)
    funnel2 = (out / "funnel.json").read_text()
    assert funnel1 == funnel2
    assert _requests(first) > 200 and _requests(second) == 0
    assert json.loads(funnel2)["d_know_total"] > 50
    # console: no Ray INFO line, no Ray Data progress block, no worker output; our phases and the funnel
    for proc in (first, second):
        text = proc.stdout + proc.stderr
        assert not [line for line in text.splitlines() if RAY_INFO.search(line)], text
        assert "Total Progress" not in text and "(pid=" not in text and "Traceback" not in text, text
        assert "D_know total:" in proc.stdout and "semantic_dedup" in proc.stdout
        # the rerun has no "images" phase: every work unit is committed already
        for phase in ("crawl", "images", "dedup", "write") if proc is first else ("crawl", "dedup", "write"):
            assert re.search(rf"^{phase}\s+.*\[\d+ s\]$", proc.stdout, re.M), (phase, proc.stdout)
        # besides the progress lines (one per phase every 10 s when piped, so their number follows the run's
        # length): the demo server's two lines, the funnel table and the output line
        other = [line for line in text.splitlines() if line.strip() and not re.match(r"^[a-z_]+ +.*\[\d+ s\]$", line)]
        assert len(other) <= 25, other
    # categories without D_ling (CPU EfficientNet-lite0, on by default): not all unknown
    import pyarrow.parquet as pq

    majors = pq.read_table(out / "d_know", columns=["category_major"])["category_major"].to_pylist()
    assert sum(m not in (None, "unknown") for m in majors) > len(majors) // 2, majors


def test_make_e2e(tmp_path):
    """`make e2e` as the README says (the venv exists: `-o` keeps make from reinstalling it)."""
    venv = Path(PY).parent.parent
    e2e = tmp_path / "e2e"
    proc = subprocess.run(
        [
            "make",
            "-C",
            str(ROOT),
            "-o",
            f"{venv}/bin/.installed",
            "e2e",
            f"VENV={venv}",
            f"E2E={e2e}",
            "E2E_LANGS=ar",
        ],  # one adapter keeps CI's share to minutes; `make e2e` trains every language
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    # D_ling: the tiny Qwen2-VL captioned, the tiny Marian translated, the tiny COMETKiwi scored every kept row
    import pyarrow.parquet as pq

    ling = pq.read_table(e2e / "corpus" / "d_ling").to_pylist()
    assert sum(r["lang"] == "ar" for r in ling) >= 2, [r["lang"] for r in ling]
    assert all(r["caption_en"] and r["text"] and r["mt_backend"] == "marian:tiny-marian" for r in ling)
    assert all(isinstance(r["qe_score"], float) and r["qe_score"] >= 0.6 for r in ling)  # qe.threshold 0.6
    # keyword accuracy (D_know) and BLEU / ROUGE-L / METEOR (D_ling), base and MELLA rows
    for title in ("Keyword Accuracy", "BLEU", "ROUGE-L", "METEOR"):
        assert f"**{title}**" in out, (title, out)
    assert "| AR |" in out, out
    assert "| base-tiny-qwen2-vl | - |" in out and "| base-tiny-qwen2-vl | MELLA |" in out, out
    assert "TINY RANDOM-WEIGHT" in out and "Qwen2-VL-7B-Instruct" in out
    summary = json.loads((e2e / "e2e.json").read_text())
    assert summary["langs"] == ["ar"]  # E2E_LANGS; without it every demo language with D_know rows
    for lang in summary["langs"]:
        assert (e2e / "adapters" / f"mella-{lang}" / "adapter_model.safetensors").is_file()
        assert f"adapter {lang}" in out
    assert (e2e / "eval" / "report.md").is_file() and (e2e / "eval" / "chart.png").is_file()
    assert not [line for line in (out + proc.stderr).splitlines() if RAY_INFO.search(line)], out + proc.stderr
