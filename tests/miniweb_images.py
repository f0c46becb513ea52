"""Real miniweb images for the dedup and moderation tests, and the planted near-duplicate edits of issue 3."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from conftest import MINIWEB
from PIL import Image, ImageEnhance


def real_images(n: int) -> list[tuple[str, bytes]]:
    """``n`` PNG/JPEG miniweb images > 256 px with distinct file bytes and distinct file names, spread over
    the manifest (every k-th), as (path, file bytes)."""
    seen_pix, seen_name, rows = set(), set(), []
    with open(MINIWEB / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r["kind"] != "image" or not r["path"].lower().endswith((".png", ".jpg", ".jpeg")):
                continue
            w, _, h = r["info"].partition("x")
            name = Path(r["path"]).name
            if int(w) > 256 and int(h) > 256 and r["sha256"] not in seen_pix and name not in seen_name:
                seen_pix.add(r["sha256"])
                seen_name.add(name)
                rows.append(r["path"])
    step = max(1, len(rows) // n)
    return [(p, (MINIWEB / p).read_bytes()) for p in rows[::step][:n]]


def planted_variants(data: bytes) -> dict[str, bytes]:
    """The four near-duplicate edits of issue 3, each saved as a new file."""
    img = Image.open(io.BytesIO(data)).convert("RGB")

    def save(im, fmt="PNG", **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    return {
        "jpeg70": save(img, "JPEG", quality=70),
        "resize90": save(img.resize((round(img.width * 0.9), round(img.height * 0.9)), Image.LANCZOS)),
        "crop2": save(img.crop((round(img.width * 0.02), round(img.height * 0.02), img.width, img.height))),
        "bright": save(ImageEnhance.Brightness(img).enhance(1.1)),
    }
