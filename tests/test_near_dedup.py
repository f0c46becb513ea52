"""pHash near-duplicate removal inside the pipeline, on real demo-web images with planted copies."""

from __future__ import annotations

import csv
import io

import pytest
from PIL import Image, ImageEnhance

from conftest import DEMO_WEB
from helpers import build, path_of, read_dir
from webserver import serve_directory

pytestmark = [pytest.mark.slow]


def _real_images(n: int) -> list[tuple[str, str]]:
    """(path, alt) of n distinct hu/cs/ru demo-web pairs (real screenshots > 256 px)."""
    out, seen = [], set()
    with open(DEMO_WEB / "PAIRS_expected.tsv", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            data = (DEMO_WEB / r["img"]).read_bytes()
            if data in seen:
                continue
            seen.add(data)
            out.append((r["img"], r["alt"]))
    return out[:n]


def _variant(data: bytes, kind: str) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    if kind == "jpeg70":
        im.save(buf, "JPEG", quality=70)
    elif kind == "resize90":
        im.resize((int(im.width * 0.9), int(im.height * 0.9)), Image.LANCZOS).save(buf, "PNG")
    elif kind == "bright":
        ImageEnhance.Brightness(im).enhance(1.03).save(buf, "PNG")
    return buf.getvalue()


def test_planted_near_duplicates_removed_distinct_kept(tmp_path, ray_session):
    site = tmp_path / "site"
    site.mkdir()
    originals = _real_images(12)
    imgs, planted = [], []
    for i, (path, alt) in enumerate(originals):
        data = (DEMO_WEB / path).read_bytes()
        (site / f"orig{i}.png").write_bytes(data)
        imgs.append((f"orig{i}.png", f"Az eredeti képernyőkép a kézikönyvből, sorszáma {i}"))
        if i < 6:
            kind = ["jpeg70", "resize90"][i % 2]
            ext = "jpg" if kind == "jpeg70" else "png"
            (site / f"copy{i}.{ext}").write_bytes(_variant(data, kind))
            imgs.append((f"copy{i}.{ext}", f"Másolat a képről, változat {i}"))
            planted.append((f"/orig{i}.png", f"/copy{i}.{ext}"))
    # originals on one page, each planted copy re-published on a page of its own (as syndicated photos are)
    def page(items):
        body = "".join(f'<p>Ez a bekezdés magyar nyelvű szöveg a képről.</p><img src="{src}" alt="{alt}">' for src, alt in items)
        return f'<html lang="hu"><body>{body}</body></html>'

    (site / "index.html").write_text(page([x for x in imgs if x[0].startswith("orig")]), encoding="utf-8")
    copies = [x for x in imgs if x[0].startswith("copy")]
    for k, item in enumerate(copies):
        (site / f"p{k}.html").write_text(page([item]), encoding="utf-8")
    (tmp_path / "seeds.txt").write_text("/index.html\n" + "".join(f"/p{k}.html\n" for k in range(len(copies))))
    with serve_directory(site) as url:
        build(tmp_path / "out", seeds=tmp_path / "seeds.txt", base_url=url, langs=["hu"],
              crawl={"read_timeout_s": 30.0, "total_timeout_s": 90.0})
    kept = {path_of(r["image_url"]) for r in read_dir(tmp_path / "out" / "d_know")}
    rejects = {path_of(r["image_url"]): r for r in read_dir(tmp_path / "out" / "rejects") if r["image_url"]}
    for orig, copy in planted:  # exactly one of each planted pair survives; the other is a counted near-duplicate
        assert len({orig, copy} & kept) == 1, (orig, copy, rejects.get(orig), rejects.get(copy))
        dropped = copy if copy not in kept else orig
        assert rejects[dropped]["reason"] == "near_duplicate" and rejects[dropped]["stage"] == "phash_dedup"
    for orig, copy in planted:
        if copy.endswith("png"):  # a 90 % resize: the full-size original has more pixels and must win
            assert orig in kept
    assert {f"/orig{i}.png" for i in range(6, len(originals))} <= kept  # distinct real images are all kept
