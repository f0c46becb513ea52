"""A synthetic build output in the real schema (RECORD_SCHEMA / REJECT_SCHEMA), for the report and card tests
and the ``inspect_corpus`` scale benchmark.

Images are real JPEGs drawn with Pillow (gradient, shapes, a label: a few KiB each, 320×240 px) from a pool
of ``pool`` distinct pictures, assigned round-robin in file order (with a pool larger than a parquet page,
~200 rows, zstd finds no repeats to compress: the parts are as large as real ones); every row has its own id. Alt-texts are real sentences in each language's
script (Arabic, Thai, Hangul, Cyrillic, Latin with diacritics). Near-duplicate rejects carry the
``detail`` the pHash and CNN stages write (``... to <kept image URL>``), pointing at kept D_know images.
"""

from __future__ import annotations

import hashlib
import io
import os
from datetime import datetime, timezone

from mella.io import write_parquet_atomic
from mella.schema import RECORD_SCHEMA, REJECT_SCHEMA, record_id, to_table

ALT = {
    "ar": "صورة لشاشة تثبيت النظام مع قائمة اللغات",
    "th": "ภาพหน้าจอการตั้งค่าแบบอักษรในโปรแกรม",
    "ko": "설치 프로그램의 언어 선택 화면",
    "ru": "Окно настройки шрифтов программы",
    "sr": "Прозор за избор језика инсталатера",
    "hu": "A telepítő nyelvválasztó képernyője",
    "cs": "Dialog pro výběr jazyka instalátoru",
    "vi": "Màn hình chọn ngôn ngữ của trình cài đặt",
}
LANGS = tuple(ALT)


def image_pool(n: int = 32, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """``n`` distinct JPEG files (quality 80) of ``size`` px."""
    from PIL import Image, ImageDraw

    out = []
    for k in range(n):
        img = Image.new("RGB", size)
        d = ImageDraw.Draw(img)
        for y in range(size[1]):
            d.line([(0, y), (size[0], y)], fill=((k * 37 + y) % 256, (k * 91) % 256, (255 - y) % 256))
        d.ellipse([20 + k % 50, 30, 140 + k % 90, 150], fill=((k * 53) % 256, 200, 90))
        d.rectangle([180, 60 + k % 40, 300, 200], outline=(255, 255, 255), width=4)
        d.text((16, 8), f"synthetic image {k}", fill=(255, 255, 255))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def _row(lang: str, k: int, img: bytes, prefix: str) -> dict:
    page, url = (
        f"https://{lang}.example.org/{prefix}/page{k // 4}.html",
        f"https://{lang}.example.org/{prefix}/img{k}.jpg",
    )
    return {
        "id": record_id(lang, page, url),
        "lang": lang,
        "page_url": page,
        "image_url": url,
        "alt_text": ALT[lang],
        "page_lang": f"html:{lang}",
        "width": 320,
        "height": 240,
        "format": "JPEG",
        "image": img,
        "image_bytes": len(img),
        "sha256": hashlib.sha256(img).hexdigest(),
        "pixel_sha256": f"{k:064x}",
        "lid_lang": lang,
        "lid_prob": 0.9,
        "source": "crawl",
        "phash": f"{k:016x}",
        "nsfw_score": 0.01,
        "category": "screenshot_ui",
        "category_major": "information_technology",
        "fetched_at": datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc),
    }


def write_corpus(
    out_dir: str,
    know_per_lang: dict[str, int],
    ling_per_lang: dict[str, int] | None = None,
    rows_per_file: int = 5000,
    near_dups: int = 0,
    rejects_per_reason: int = 0,
    pool: int = 32,
) -> dict:
    """Write ``out_dir/{d_know,d_ling,rejects}/part-*.parquet``; return the exact counts written.

    Rows of all languages are interleaved across files (as the build writes them). ``near_dups``: per
    language, that many pHash near-duplicate rejects (and as many CNN ones) of the first D_know images.
    ``rejects_per_reason``: per language, that many ``alt_text: alt_empty`` and ``resolution: too_small`` rejects.
    """
    imgs = image_pool(pool)
    counts = {"d_know": dict(know_per_lang), "d_ling": dict(ling_per_lang or {}), "rejects": {}}
    for name, per_lang, schema in (
        ("d_know", know_per_lang, RECORD_SCHEMA),
        ("d_ling", ling_per_lang or {}, RECORD_SCHEMA),
    ):
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        order = [(lang, k) for k in range(max(per_lang.values(), default=0)) for lang in per_lang if k < per_lang[lang]]
        for f, start in enumerate(range(0, len(order), rows_per_file)):
            rows = []
            for i, (lang, k) in enumerate(order[start : start + rows_per_file], start):
                r = _row(lang, k, imgs[i % pool], name)
                if name == "d_ling":
                    r.update(
                        alt_text="",
                        caption_en=f"A screenshot of an installer dialog, number {k}.",
                        text=ALT[lang],
                        mt_backend="nllb:nllb-200-distilled-600M",
                        qe_score=0.81,
                        d_ling_reason="alt_text:alt_empty",
                    )
                rows.append(r)
            write_parquet_atomic(to_table(rows, schema), os.path.join(out_dir, name, f"part-{f:05d}.parquet"))
    rejects = []
    for lang in know_per_lang:
        for k in range(min(near_dups, know_per_lang[lang])):
            kept = _row(lang, k, imgs[k % pool], "d_know")
            for stage, reason, detail in (
                ("phash_dedup", "near_duplicate", f"pHash distance 3 <= 4 to {kept['image_url']}"),
                ("semantic_dedup", "semantic_duplicate", f"cosine 0.9712 >= 0.96 to {kept['image_url']}"),
            ):
                r = _row(lang, k, imgs[k % pool], f"dup-{stage}")
                rejects.append({**r, "image": None, "stage": stage, "reason": reason, "detail": detail})
        for k in range(rejects_per_reason):
            r = _row(lang, k, imgs[k % pool], "rej")
            rejects.append(
                {
                    **r,
                    "image": None,
                    "alt_text": "",
                    "width": None,
                    "height": None,
                    "stage": "alt_text",
                    "reason": "alt_empty",
                    "detail": "",
                    "id": record_id(lang, r["page_url"], r["image_url"] + "#a"),
                }
            )
            rejects.append(
                {
                    **r,
                    "image": None,
                    "width": 200,
                    "height": 150,
                    "stage": "resolution",
                    "reason": "too_small",
                    "detail": "200x150 px, need both > 256",
                    "id": record_id(lang, r["page_url"], r["image_url"] + "#s"),
                }
            )
    if rejects:
        os.makedirs(os.path.join(out_dir, "rejects"), exist_ok=True)
        write_parquet_atomic(to_table(rejects, REJECT_SCHEMA), os.path.join(out_dir, "rejects", "part-00000.parquet"))
    for r in rejects:
        key = (r["stage"], r["reason"])
        counts["rejects"][key] = counts["rejects"].get(key, 0) + 1
    return counts
