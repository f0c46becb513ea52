"""Decode and resolution filters (paper appendix B.2), with Pillow.

Decode: the image bytes must open with Pillow as one of ``FilterConfig.allowed_formats`` (JPEG, PNG,
WebP, GIF — first frame), their declared size must be ≤ ``max_image_pixels`` (checked from the header
*before* any pixel is decoded: the decompression-bomb guard), and the full first frame must decode.
Reasons: ``no_image``, ``format_svg``, ``format_<NAME>``, ``undecodable``, ``decompression_bomb``,
``truncated``, ``corrupt``.

The exact-duplicate key ``pixel_sha256`` is the sha256 of ``"{W}x{H}"`` and the RGBA pixel bytes
of the first frame, so the same picture stored as PNG and as lossless WebP has one key.

Pixel budget (``filters.decode_max_pixels``): an image with more pixels is decoded reduced by the
smallest integer factor that fits — JPEG by DCT scaling while decoding (``Image.draft``, 1/2, 1/4,
1/8: the full-size raster never exists), other formats by ``Image.reduce`` right after decoding,
before the RGBA conversion and hashing (which would otherwise hold three full-size copies). Width
and height stay those of the file; ``pixel_sha256`` and pHash are then of the reduced raster
(deterministic: the same bytes always give the same key).

Resolution: keep only width > ``min_side_px`` and height > ``min_side_px`` (paper: "both its width and
height exceed 256 pixels"). Reason: ``too_small``. The decode stage applies it to the size in the image
header, before decoding any pixel (icons and thumbnails, most of the images of a web page, cost a header
parse instead of a full decode + hashes), and counts those rows under the ``resolution`` stage;
:class:`ResolutionStage` checks decoded sizes again (a header that lies is caught by the decode).
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image, UnidentifiedImageError

from mella.config import FilterConfig
from mella.phash_index import hash_to_hex, phash64
from mella.stages.base import Stage, reject

_SVG_SNIFF = (b"<svg", b"<?xml")


def _looks_like_svg(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith(_SVG_SNIFF) and b"<svg" in data[:4096].lower()


class TooSmall(ValueError):
    """The header's size fails the resolution filter (``args[0]`` = detail)."""


def decode_image(data: bytes, cfg: FilterConfig) -> dict:
    """Decode ``data`` → ``{"width", "height", "format", "pixel_sha256", "phash"}`` (px, px, Pillow name,
    hex sha256, 16-hex-digit 64-bit pHash of the first frame).

    Raises:
        TooSmall: the header's width or height is ≤ ``cfg.min_side_px`` (nothing was decoded).
        ValueError: with the reject reason code as its message (see module docstring).
    """
    if not data:
        raise ValueError("no_image")
    if _looks_like_svg(data):
        raise ValueError("format_svg")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError("decompression_bomb") from None
        except UnidentifiedImageError:
            raise ValueError("undecodable") from None
        except (OSError, SyntaxError, ValueError):
            raise ValueError("corrupt") from None
        with im:
            w, h = im.size
            fmt = (im.format or "").upper()
            if fmt not in cfg.allowed_formats:
                raise ValueError(f"format_{fmt.lower() or 'unknown'}")
            if w * h > cfg.max_image_pixels:
                raise ValueError("decompression_bomb")
            m = cfg.min_side_px
            if not (w > m and h > m):
                raise TooSmall(f"{w}x{h} px, need both > {m} (header)")
            budget = getattr(cfg, "decode_max_pixels", None) or w * h
            factor = 1
            while (w // factor) * (h // factor) > budget:
                factor += 1
            try:
                im.seek(0)
                if factor > 1 and fmt == "JPEG":
                    im.draft("RGB", (w // factor, h // factor))
                im.load()
                cw, ch = im.size
                factor = 1
                while (cw // factor) * (ch // factor) > budget:
                    factor += 1
                if factor > 1:
                    if im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
                        im = im.convert("RGBA")
                    im = im.reduce(factor)
                rgba = im.convert("RGBA")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ValueError("decompression_bomb") from None
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ValueError("truncated" if "truncat" in str(e).lower() or isinstance(e, EOFError) else "corrupt") from None
            digest = hashlib.sha256(f"{w}x{h}".encode())
            digest.update(rgba.tobytes())
            phash = hash_to_hex(phash64(rgba))
    return {"width": w, "height": h, "format": fmt, "pixel_sha256": digest.hexdigest(), "phash": phash}


class DecodeStage(Stage):
    name = "decode"

    def __init__(self, cfg: FilterConfig | None = None) -> None:
        self.cfg = cfg or FilterConfig()

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            try:
                r.update(decode_image(r.get("image") or b"", self.cfg))
            except TooSmall as e:
                reject(r, ResolutionStage.name, "too_small", str(e))
            except ValueError as e:
                reject(r, self.name, str(e))


class ResolutionStage(Stage):
    name = "resolution"
    reads_image = False

    def __init__(self, cfg: FilterConfig | None = None) -> None:
        self.cfg = cfg or FilterConfig()

    def process(self, rows: list[dict]) -> None:
        m = self.cfg.min_side_px
        for r in rows:
            w, h = r.get("width") or 0, r.get("height") or 0
            if not (w > m and h > m):
                reject(r, self.name, "too_small", f"{w}x{h} px, need both > {m}")
