"""Bundled data: the embedded demo web (demo_web/) and the paper's seed sites (mella/data/seeds/)."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml
from PIL import Image
from selectolax.lexbor import LexborHTMLParser

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_web"
MINIWEB = REPO.parent / "shared" / "miniweb"
SEEDS = REPO / "platform" / "mella" / "data" / "seeds"
META = {"MANIFEST.tsv", "PAIRS_expected.tsv", "seeds.txt", "LICENSES.md"}
LANGS = ["ar", "cs", "hu", "ko", "ru", "sr", "th", "vi"]


def tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def content_files() -> list[str]:
    return sorted(
        p.relative_to(DEMO).as_posix()
        for p in DEMO.rglob("*")
        if p.is_file() and p.relative_to(DEMO).as_posix() not in META
    )


def local_images(page: str, root: Path) -> set[str]:
    """Site paths of a page's <img src>, resolved against the page URL and <base href>."""
    tree = LexborHTMLParser((root / page).read_bytes())
    base = tree.css_first("base")
    url = urljoin("http://h/" + page, base.attributes.get("href") or "") if base else "http://h/" + page
    out = set()
    for img in tree.css("img"):
        u = urlsplit(urljoin(url, (img.attributes.get("src") or "").strip()))
        if u.netloc == "h":
            out.add(unquote(u.path.lstrip("/")))
    return out


def test_demo_web_size_and_provenance():
    files = content_files()
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 8 * 10**6, total
    manifest = {r["path"]: r for r in tsv(DEMO / "MANIFEST.tsv")}
    assert sorted(manifest) == files
    licences = (DEMO / "LICENSES.md").read_text(encoding="utf-8")
    for path, r in manifest.items():
        assert r["source"].startswith("deb:") and "news-html-only" not in path and not path.startswith("warc/")
        assert hashlib.sha256((DEMO / path).read_bytes()).hexdigest() == r["sha256"], path
        assert f"`{path}`" in licences and r["license"] in licences
        assert f"`{r['source'].split(':')[1]}`" in licences


def test_demo_web_seeds_and_pairs():
    manifest = {r["path"]: r for r in tsv(DEMO / "MANIFEST.tsv")}
    seeds = [s.strip().lstrip("/") for s in (DEMO / "seeds.txt").read_text().splitlines() if s.strip()]
    assert all(manifest[s]["kind"] == "html" for s in seeds)
    assert {s.split("/")[0] for s in seeds} == set(LANGS)
    assert any("kde-handbook-sr-latin" in s for s in seeds) and any("kde-handbook-sr/" in s for s in seeds)
    pairs = tsv(DEMO / "PAIRS_expected.tsv")
    assert {p["lang"] for p in pairs} == {"ar", "cs", "hu", "ko", "ru", "sr", "sr-Latn"}  # none for th, vi
    for p in pairs:
        assert p["page"] in seeds and p["img"] in local_images(p["page"], DEMO)
        im = Image.open(io.BytesIO((DEMO / p["img"]).read_bytes()))
        assert "x".join(map(str, im.size)) == p["wxh"]
    # the subset holds small images too (filters must reject them)
    sizes = [Image.open(DEMO / f).size for f in manifest if f.endswith(".png")]
    assert any(min(s) <= 256 for s in sizes) and any(f.endswith(".svg") for f in manifest)


@pytest.mark.skipif(not MINIWEB.is_dir(), reason="../shared/miniweb not present")
def test_demo_web_pages_keep_every_miniweb_image_and_pairs_row():
    seeds = [s.strip().lstrip("/") for s in (DEMO / "seeds.txt").read_text().splitlines() if s.strip()]
    for page in seeds:
        assert (DEMO / page).read_bytes() == (MINIWEB / page).read_bytes()
        for img in local_images(page, MINIWEB):
            assert (DEMO / img).is_file() == (MINIWEB / img).is_file(), (page, img)
    mini_rows = [r for r in tsv(MINIWEB / "PAIRS_expected.tsv") if r["page"] in seeds]
    assert mini_rows == tsv(DEMO / "PAIRS_expected.tsv")


def test_paper_seed_sites():
    sites = yaml.safe_load((SEEDS / "paper_sites.yaml").read_text())
    assert sorted(sites) == LANGS
    for lang in LANGS:
        urls = (SEEDS / f"{lang}.txt").read_text().split()
        assert urls == sites[lang] and len(urls) == 3
        for u in urls:
            s = urlsplit(u)
            assert s.scheme == "https" and s.netloc and s.path.endswith("/")
    all_urls = [u for v in sites.values() for u in v]
    assert len(set(all_urls)) == 24
    assert "https://www.clien.net/service/" in sites["ko"] and "https://cs.wikipedia.org/" in sites["cs"]
