"""Alt-text usability (paper 3.1.1): reject empty, filename-like and boilerplate alt-text.

Rules, checked on the whitespace-normalised alt (reasons in brackets):
- missing ``alt`` attribute or empty string [``alt_empty``];
- longer than ``filters.max_alt_chars`` characters [``alt_too_long``] (the row keeps the first
  ``max_alt_chars`` characters, so a 1 MB attribute does not travel to the output);
- no letters at all (``"2"``, ``"---"``) or a single letter [``alt_too_short``];
- a file name or camera/CMS id: ``IMG_1234.jpg``, ``DSC01234``, ``photo-2023-01-01.png``,
  ``a1b2c3d4e5f6`` [``alt_filename``];
- boilerplate (case-folded exact match) — generic words for "image/photo/logo/icon/banner", navigation
  labels ("previous", "next", "home") and placeholders ("null", "undefined"), in English and the
  target languages [``alt_boilerplate``].
"""

from __future__ import annotations

import re

from mella.stages.base import Stage, reject

_FILENAME = re.compile(
    r"^[\w\-.()~%+ ]*\.(jpe?g|jfif|png|gif|webp|svg|bmp|tiff?|avif|heic|ico)(\?.*)?$", re.I
)
_CAMERA_ID = re.compile(r"^(img|dsc[nf]?|dcim|pict?|pxl|mvimg|photo|image|screenshot|scan|untitled|file)[\s_\-]*\d{2,}\b", re.I)
_HEX_OR_DIGITS = re.compile(r"^(?=.*\d)[0-9a-f\-_]{8,}$", re.I)

BOILERPLATE = {
    # en
    "image", "img", "images", "photo", "photos", "picture", "pic", "logo", "icon", "banner", "avatar",
    "thumbnail", "thumb", "spacer", "placeholder", "alt", "alt text", "null", "undefined", "none", "n/a",
    "untitled", "advertisement", "ad", "ads", "click here", "loading", "arrow", "button", "previous", "prev",
    "next", "home", "up", "top", "back", "close", "menu", "search", "graphic", "figure", "screenshot",
    "product site", "documentation site", "note", "tip", "warning", "caution", "important",
    # ar
    "صورة", "صور", "شعار", "أيقونة", "ايقونة", "السابق", "التالي", "الرئيسية", "إعلان",
    # cs
    "obrázek", "obrazek", "foto", "fotografie", "ikona", "předchozí", "předcházející", "další", "domů",
    "nahoru", "reklama", "poznámka", "tip", "varování",
    # hu
    "kép", "fotó", "logó", "ikon", "előző", "következő", "kezdőlap", "fel", "hirdetés", "megjegyzés", "figyelem",
    # ko
    "이미지", "사진", "그림", "로고", "아이콘", "이전", "다음", "홈", "위로", "광고", "배너",
    # ru
    "изображение", "картинка", "фото", "фотография", "логотип", "иконка", "назад", "далее", "вперёд",
    "вперед", "наверх", "домой", "реклама", "примечание", "предупреждение", "совет",
    # sr
    "слика", "фотографија", "лого", "икона", "претходно", "следеће", "почетак", "горе",
    "slika", "fotografija", "ikona", "prethodno", "sledeće", "početak", "gore", "napomena", "напомена",
    # th
    "รูปภาพ", "ภาพ", "รูป", "โลโก้", "ไอคอน", "ก่อนหน้า", "ถัดไป", "หน้าแรก", "โฆษณา",
    # vi
    "hình ảnh", "ảnh", "hình", "biểu tượng", "trước", "tiếp", "trang chủ", "quảng cáo", "ghi chú",
}


#: default ``filters.max_alt_chars``, characters
MAX_ALT_CHARS = 1000


def alt_problem(alt: str | None, max_chars: int = MAX_ALT_CHARS) -> str | None:
    """Reason code why ``alt`` is unusable as a D_know text, or None when it is usable."""
    if alt is None or not alt.strip():
        return "alt_empty"
    text = alt.strip()
    if len(text) > max_chars:
        return "alt_too_long"
    if sum(ch.isalpha() for ch in text) < 2:
        return "alt_too_short"
    if _FILENAME.match(text) or _CAMERA_ID.match(text) or _HEX_OR_DIGITS.match(text):
        return "alt_filename"
    if text.casefold().strip(" .:!-–—|") in BOILERPLATE:
        return "alt_boilerplate"
    return None


class AltTextStage(Stage):
    """Reject rows whose alt-text is unusable (reasons above).

    With ``route_to_d_ling`` (D_ling enabled) such a row is not rejected: it stays active with
    ``d_ling_reason = "alt_text:<reason>"`` so its image goes through the image filters and, if it
    passes them, to captioning (paper 3.1.2: images without usable alt-text form D_ling).
    """

    name = "alt_text"
    reads_image = False

    def __init__(self, route_to_d_ling: bool = False, max_chars: int = MAX_ALT_CHARS) -> None:
        self.route = route_to_d_ling
        self.max_chars = max_chars

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            problem = alt_problem(r.get("alt_text"), self.max_chars)
            if not problem:
                continue
            if problem == "alt_too_long":
                n = len(r["alt_text"])
                r["alt_text"] = r["alt_text"][: self.max_chars]
                if not self.route:
                    reject(r, self.name, problem, f"{n} characters > {self.max_chars}")
                    continue
            if self.route:
                r["d_ling_reason"] = f"{self.name}:{problem}"
            else:
                reject(r, self.name, problem, repr(r.get("alt_text"))[:200])
