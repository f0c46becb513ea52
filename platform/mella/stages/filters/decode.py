"""Decode and resolution filters (paper appendix B.2), with Pillow.

Decode: the image bytes must open with Pillow as one of ``DecodeConfig.allowed_formats`` (JPEG, PNG,
WebP, GIF — first frame), their declared size must be ≤ ``max_image_pixels`` (checked from the header
*before* any pixel is decoded: the decompression-bomb guard), and the full first frame must decode.
Reasons: ``no_image``, ``format_svg``, ``format_<NAME>``, ``undecodable``, ``decompression_bomb``,
``truncated``, ``corrupt``.

The exact-duplicate key ``pixel_sha256`` (:func:`pixel_key`) is a function of the first frame's RGBA
pixels alone, so the same picture stored as PNG (RGB, RGBA or palette) and as lossless WebP has one key.
It hashes the RGB bytes of a fully opaque frame and the RGBA bytes otherwise, taken from the decoded
buffer as it is when its mode already is that form (JPEG and most PNG decode to RGB): no RGBA copy of
every photo.

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
from pydantic import Field

from mella.phash_index import hash_to_hex, phash64
from mella.resources import Strict
from mella.stages.base import Filter, Stage, reject


class DecodeConfig(Strict):
    """Decode and resolution settings (paper appendix B.2: "resolution > 256 px on both sides")."""

    min_side_px: int = Field(256, ge=1, description="keep only width > min_side_px and height > min_side_px")
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="decompression-bomb guard: larger width*height is rejected unopened"
    )
    decode_max_pixels: int = Field(
        16_000_000,
        gt=0,
        description="pixel budget of one decode: larger images are decoded reduced "
        "(JPEG: Image.draft DCT scaling; others: Image.reduce before conversion), px",
    )
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"])


_SVG_SNIFF = (b"<svg", b"<?xml")


def _looks_like_svg(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith(_SVG_SNIFF) and b"<svg" in data[:4096].lower()


class TooSmall(ValueError):
    """The header's size fails the resolution filter (``args[0]`` = detail)."""


def decode_image(data: bytes, cfg: DecodeConfig) -> dict:
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
                key, canonical = pixel_key(im, (w, h))  # converts what is not RGB/RGBA: a failure is a reject
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ValueError("decompression_bomb") from None
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ValueError(
                    "truncated" if "truncat" in str(e).lower() or isinstance(e, EOFError) else "corrupt"
                ) from None
            phash = hash_to_hex(phash64(canonical))
    return {"width": w, "height": h, "format": fmt, "pixel_sha256": key, "phash": phash}


def pixel_key(im: Image.Image, size: tuple[int, int] | None = None) -> tuple[str, Image.Image]:
    """The exact-duplicate key of a decoded frame, and the RGB or RGBA image it hashed.

    Key = sha256 of ``"{W}x{H}:RGB:"`` + the RGB bytes when every pixel is opaque, else of
    ``"{W}x{H}:RGBA:"`` + the RGBA bytes (``W``, ``H`` = ``size``, the file's size in px; default the
    frame's). Both forms are functions of the frame's RGBA pixels, and the form is part of what is
    hashed, so two frames get one key exactly when their RGBA pixels are equal (``tests/test_decode_key.py``
    proves it on the miniweb's images stored as RGB, RGBA, palette and lossless WebP). An RGB frame
    (JPEG, most PNG) is hashed from its own buffer, an RGBA one after checking its alpha band; other
    modes (P, L, LA, CMYK ...) are converted to RGBA first.
    """
    w, h = size or im.size
    if im.mode != "RGB":
        if im.mode != "RGBA":
            im = im.convert("RGBA")
        if im.getextrema()[3] == (255, 255):
            im = im.convert("RGB")
    digest = hashlib.sha256(f"{w}x{h}:{im.mode}:".encode())
    digest.update(im.tobytes())
    return digest.hexdigest(), im


class DecodeStage(Stage):
    """Decode each image with Pillow (:func:`decode_image`); fills size, format, pixel key and pHash.

    Rejects under ``decode`` (reason = the ``ValueError`` text of :func:`decode_image`) and, when the
    header already shows the image is too small (nothing decoded), under ``resolution``/``too_small``.
    """

    name = "decode"
    reads = ("image",)
    writes = ("width", "height", "format", "pixel_sha256", "phash")
    rejects = True

    def __init__(self, cfg: DecodeConfig | None = None, batch_size: int | None = None) -> None:
        self.cfg = cfg or DecodeConfig()
        self.batch_size = batch_size

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            try:
                r.update(decode_image(r.get("image") or b"", self.cfg))
            except TooSmall as e:
                reject(r, ResolutionStage.name, "too_small", str(e))
            except ValueError as e:
                self.reject(r, str(e))


class ResolutionStage(Filter):
    """Paper appendix B.2: keep images whose width *and* height exceed ``min_side_px`` (256 px)."""

    name = "resolution"
    reads = ("width", "height")

    def __init__(self, cfg: DecodeConfig | None = None, batch_size: int | None = None) -> None:
        self.cfg = cfg or DecodeConfig()
        self.batch_size = batch_size

    def filter(self, row: dict) -> tuple[str, str] | None:
        m = self.cfg.min_side_px
        w, h = row.get("width") or 0, row.get("height") or 0
        return None if (w > m and h > m) else ("too_small", f"{w}x{h} px, need both > {m}")
