"""The exact-duplicate pixel key hashes the decoded buffer in its own mode, yet stays a pixel identity (issue 13).

:func:`mella.stages.filters.decode.pixel_key` skips the RGBA copy of RGB frames. These tests prove on the
bundled demo web's real images (RGB, RGBA and palette PNG, JPEG) that this changes nothing about which
images share a key: two frames get one key exactly when their RGBA pixels are equal, whatever mode or
format stores them, and the pHash is that of the RGBA frame, as before.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter

import imagehash
import pytest
from conftest import DEMO_WEB
from PIL import Image

from mella.stages.filters.decode import DecodeConfig, decode_image, pixel_key

IMAGES = sorted(p for p in DEMO_WEB.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif"))


def rgba_reference_key(data: bytes) -> str:
    """The key defined from the RGBA frame (what every image was converted to before this change)."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        rgba = im.convert("RGBA")
    opaque = rgba.getextrema()[3] == (255, 255)
    body = rgba.convert("RGB").tobytes() if opaque else rgba.tobytes()
    return hashlib.sha256(f"{w}x{h}:{'RGB' if opaque else 'RGBA'}:".encode() + body).hexdigest()


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def decodable() -> list[bytes]:
    """The demo web's images that pass the resolution filter (the ones the key is computed for)."""
    cfg, out = DecodeConfig(), []
    for p in IMAGES:
        data = p.read_bytes()
        try:
            decode_image(data, cfg)
        except ValueError:  # too small (TooSmall is a ValueError), or not an image
            continue
        out.append(data)
    return out


def test_the_demo_web_has_every_mode_the_fast_path_must_handle(decodable):
    modes = Counter(Image.open(io.BytesIO(d)).mode for d in decodable)
    assert len(decodable) >= 40 and modes["RGB"] and (modes["P"] or modes["RGBA"]), modes


def test_native_buffer_key_equals_the_rgba_defined_key(decodable):
    cfg = DecodeConfig()
    for data in decodable:
        out = decode_image(data, cfg)
        assert out["pixel_sha256"] == rgba_reference_key(data)
        with Image.open(io.BytesIO(data)) as im:  # pHash: imagehash's, of the RGBA frame (as before)
            assert out["phash"] == str(imagehash.phash(im.convert("RGBA"), hash_size=8))


def test_one_key_per_rgba_picture_across_modes_and_formats(decodable):
    """Each picture re-stored losslessly as RGB PNG, RGBA PNG (opaque alpha), lossless WebP and, when it has
    few colours, palette PNG: one key per picture; different pictures: different keys."""
    cfg = DecodeConfig()
    keys_by_picture = []
    for data in decodable[:25]:
        with Image.open(io.BytesIO(data)) as im:
            rgba = im.convert("RGBA")
        variants = [data, _save(rgba, "PNG"), _save(rgba, "WEBP", lossless=True, exact=True)]
        if rgba.getextrema()[3] == (255, 255):
            rgb = rgba.convert("RGB")
            variants += [_save(rgb, "PNG"), _save(rgb, "WEBP", lossless=True)]
            if len(rgb.getcolors(256) or []) > 0:  # <= 256 colours: a palette PNG stores the same pixels
                variants.append(_save(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"))
        keys = {decode_image(v, cfg)["pixel_sha256"] for v in variants}
        assert len(keys) == 1, f"{len(variants)} lossless copies gave {len(keys)} keys"
        keys_by_picture.append(keys.pop())
    distinct_pictures = {rgba_reference_key(d) for d in decodable[:25]}
    assert len(set(keys_by_picture)) == len(distinct_pictures)


def test_alpha_is_part_of_the_identity():
    rgb = Image.new("RGB", (300, 300), (200, 30, 40))
    rgba = rgb.convert("RGBA")
    one_clear = rgba.copy()
    one_clear.putpixel((7, 9), (200, 30, 40, 0))
    k_rgb, k_opaque, k_clear = (pixel_key(im)[0] for im in (rgb, rgba, one_clear))
    assert k_rgb == k_opaque != k_clear
    assert pixel_key(Image.new("RGB", (300, 301), (200, 30, 40)))[0] != k_rgb  # the size is hashed too
