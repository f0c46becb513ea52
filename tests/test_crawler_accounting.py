"""The crawler's accounting: srcset placeholders, every dropped ``<img>`` and WARC record counted with a
reason, provenance (WARC file, offset, length) on every row, and the seeds preflight of the SSRF guard."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from mella.config import CrawlConfig
from mella.console import UsageError
from mella.preflight import check_seed_addresses
from mella.stages.filters.langid import LangIDConfig
from mella.stages.io.extract import ExtractStage, is_placeholder, parse_page
from mella.warc import RotatingWarcWriter, iter_responses

ROOT = Path(__file__).resolve().parents[1]


def _png_data_uri(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


PIXEL_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _images(html: str) -> list[str]:
    page = parse_page("http://a.example/p.html", f"<html lang=hu><body>{html}</body></html>".encode())
    return [ref.image_url for ref in page.images]


def test_placeholder_data_candidate_never_displaces_a_url_candidate():
    assert _images(f'<img srcset="lo.png 1x, {PIXEL_GIF} 2x" alt="a">') == ["http://a.example/lo.png"]
    big = _png_data_uri((64, 64))
    # declared 1 px wide, though its bytes are a real image: a placeholder too
    assert _images(f'<img srcset="lo.png 300w, {big} 1w" alt="a">') == ["http://a.example/lo.png"]
    # a placeholder srcset yields to a real src
    assert _images(f'<img src="real.png" srcset="{PIXEL_GIF} 1x" alt="a">') == ["http://a.example/real.png"]
    # a real data: image is still chosen: the largest candidate, and the only one given
    assert _images(f'<img srcset="lo.png 100w, {big} 800w" alt="a">')[0].startswith("data:image/png;sha256,")
    assert _images(f'<img srcset="{big} 2x" alt="a">')[0].startswith("data:image/png;sha256,")
    assert is_placeholder(PIXEL_GIF) and not is_placeholder(big) and not is_placeholder("http://a.example/x.png")


def test_img_without_src_and_repeats_on_a_page_are_counted():
    page = parse_page(
        "http://a.example/p.html",
        b"""<html lang=hu><body>
        <img alt="no source"><img src="" alt="empty"><img src="a.png" alt="egy"><img src="a.png" alt="egy">
        <img src="a.png" alt="masik"><img src="javascript:void(0)" alt="x"></body></html>""",
    )
    assert [(r.image_url, r.alt_text) for r in page.images] == [
        ("http://a.example/a.png", "egy"),
        ("http://a.example/a.png", "masik"),
    ]
    assert page.dropped == {"img_without_src": 2, "duplicate_on_page": 1, "image_url_unusable": 1}
    n_img = 6
    assert len(page.images) + sum(page.dropped.values()) == n_img


def _warc(tmp_path, gz: bool) -> str:
    w = RotatingWarcWriter(str(tmp_path), "pages", gzip=gz)
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    html = [("Content-Type", "text/html; charset=utf-8")]
    w.write_response(
        "http://a.example/p.html",
        200,
        "OK",
        html,
        b"<html lang=hu><p>Egy magyar oldal</p><img src=/a.png alt='egy kep'><img src=/b.png alt='ketto'>"
        b"<img alt=semmi></html>",
        now,
    )
    w.write_response("http://a.example/gone.html", 404, "Not Found", html, b"<html>gone</html>", now)
    w.write_response("http://a.example/moved.html", 301, "Moved", [("Location", "/p.html")], b"", now)
    w.write_response("http://a.example/a.png", 200, "OK", [("Content-Type", "image/png")], b"\x89PNG\r\n\x1a\n", now)
    w.write_response("http://a.example/robots.txt", 200, "OK", [("Content-Type", "text/plain")], b"User-agent: *", now)
    w.write_response(
        "http://a.example/en.html",
        200,
        "OK",
        html,
        b"<html lang=en><p>An English page about nothing</p><img src=/c.png alt='a cat'></html>",
        now,
    )
    w.close()
    (path,) = map(str, tmp_path.glob("pages-*.warc*"))
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_warc_records_counted_and_rows_carry_provenance(tmp_path, gz):
    path = _warc(tmp_path, gz)
    crawl = CrawlConfig()
    stage = ExtractStage(["hu"], LangIDConfig(), crawl.ai_opt_out_directives, crawl.user_agent)
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    rows = [r for batch in stage.read(path, "warc", str(stats_dir)) for r in batch]
    (stats,) = [json.loads(p.read_text()) for p in stats_dir.glob("pages-*.json")]
    assert stats["records_skipped:http_404"] == 1 and stats["records_skipped:http_301"] == 1
    assert stats["records_skipped:not_html"] == 2
    assert stats["pages_in"] == 2 and stats["pages_out:hu"] == 1
    assert stats["images_out"] == 2 and stats["dropped:img_without_src"] == 1
    records = list(iter_responses(path))
    assert len(records) == 6 == stats["pages_in"] + sum(v for k, v in stats.items() if k.startswith("records_skipped:"))
    raw = Path(path).read_bytes()
    for r in rows:  # every row, kept candidate or page reject, names the bytes of its page
        assert r["warc_filename"] == Path(path).name
        rec = raw[r["warc_record_offset"] : r["warc_record_offset"] + r["warc_record_length"]]
        rec = gzip.decompress(rec) if gz else rec
        assert rec.startswith(b"WARC/1.") and f"WARC-Target-URI: {r['page_url']}".encode() in rec
    assert sorted(r.get("image_url") or "-" for r in rows) == ["-", "http://a.example/a.png", "http://a.example/b.png"]


def test_seed_preflight_refuses_private_only_seeds():
    private = ["http://10.1.2.3/", "http://127.0.0.1:8000/a", "http://[::1]/", "http://169.254.169.254/latest"]
    with pytest.raises(UsageError, match="--allow-private-hosts"):
        check_seed_addresses(private, [])
    with pytest.raises(UsageError, match="--allow-private-hosts"):  # allowing one network that covers none of them
        check_seed_addresses(private, ["192.168.0.0/16"])
    check_seed_addresses(private, ["*"])
    check_seed_addresses(private, ["127.0.0.1"])  # one seed gets through: the crawl reports the others
    check_seed_addresses([*private, "http://93.184.215.14/"], [])  # a global address
    check_seed_addresses(["http://no-such-host.invalid/"], [])  # unresolvable here: the crawl reports it


def test_build_corpus_private_seeds_exit_2_with_the_hint_and_write_nothing(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("http://10.1.2.3/\nhttp://192.168.7.7/index.html\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "build_corpus.py"), "--seeds", str(seeds), "--output", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-private-hosts" in lines[0] and "10.1.2.3" in lines[0], proc.stderr
    assert not out.exists()
