"""Extraction (paper 3.1.1): HTML page → image candidates with their alt-text, page language, links.

Parsing is selectolax (lexbor, an HTML5-conformant parser that recovers from broken markup the way
browsers do). Decoding follows the HTML encoding sniffing order (WHATWG "determining the character
encoding"): BOM, HTTP ``Content-Type`` charset, ``<meta charset>``/``http-equiv``; when none is given
or it fails to decode, ``charset-normalizer`` detects it (legacy charsets such as windows-1251).

Image URL per ``<img>`` (resolved against ``<base href>``, else the page URL, and normalised once by
:func:`mella.urls.normalise_url`): inside ``<picture>``, the first ``<source>`` of a supported ``type``
(JPEG, PNG, WebP, GIF or none given; one without ``media`` first) — the others are counted
``picture_source_skipped``; else the largest ``srcset``/``data-srcset`` candidate (parsed by the WHATWG
"parse a srcset attribute" algorithm: commas inside URLs, ``w``/``x`` descriptors, ``data:``
candidates); else a lazy-loading attribute (``data-src``, ``data-lazy-src``, ``data-original``); else
``src``. A ``data:`` image (RFC 2397, parsed by ``w3lib``) is decoded here: its bytes travel in the row
and its ``image_url`` is the stable ``data:<media type>;sha256,<hex digest of the bytes>``; an
undecodable or oversized one is rejected (``fetch`` stage, ``data_uri_invalid``/``data_uri_too_large``).

AI-training opt-outs (:mod:`mella.optout`): an ``X-Robots-Tag``/``tdm-reservation`` response header
or a ``<meta name="robots">`` with a disallowed directive raises :class:`PageRejected` (``ai_opt_out``).

Page language evidence, strongest first: ``<html lang>``/``xml:lang``, ``<meta http-equiv=content-language>``
and ``<meta name=language|dc.language>``, ``og:locale``, the HTTP ``Content-Language`` header, the
most common ``lang`` attribute inside ``<body>``, and fastText on the page's visible text.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import charset_normalizer
from selectolax.lexbor import LexborHTMLParser
from w3lib.url import parse_data_uri

from mella import lid
from mella.languages import load_languages, normalise_lang_tag
from mella.optout import DEFAULT_DIRECTIVES, header_opt_out, meta_opt_out
from mella.stages.base import Stage
from mella.urls import normalise_url

_WS = re.compile(r"\s+")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url")
#: ``<source type>`` values whose images the decode stage accepts (others are skipped and counted)
_SUPPORTED_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "image/apng")
#: largest ``data:`` image decoded from a page, bytes (the image fetch cap, crawl.max_image_bytes)
MAX_DATA_URI_BYTES = 16 * 2**20

#: visible text used for page-level LID, characters
PAGE_LID_CHARS = 3000
#: a configured language must hold this share of a page's letters (line-level LID) to be its language
PAGE_TARGET_MIN_SHARE = 0.2
#: ... and this share to be a *candidate* language of the page (partly translated pages: alt-texts
#: in the translated language are kept even when most of the prose is still English)
PAGE_CANDIDATE_MIN_SHARE = 0.01


@dataclass
class ImageRef:
    image_url: str
    alt_text: str | None  # None: no alt attribute; "" : alt=""
    data: bytes | None = None  # a decoded data: image's bytes
    error: str | None = None  # data: image that cannot be used: reject reason

    def row_fields(self) -> dict:
        """Row columns of this candidate (``image_url``, ``alt_text``; a data: image's ``image`` bytes or reject)."""
        out = {"image_url": self.image_url, "alt_text": self.alt_text}
        if self.data is not None:
            out["image"] = self.data
        if self.error:
            out.update(stage="fetch", reason=self.error, detail="data: URI in the page")
        return out


@dataclass
class Page:
    """What extraction learns from one page."""

    url: str
    lang: str | None  # decided language code (any language, not only targets)
    lang_evidence: str  # e.g. "html:hu", "lid-lines:th(0.97)"
    candidate_langs: list[str] = field(default_factory=list)  # configured languages present, best first
    images: list[ImageRef] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # items dropped inside the page: reason -> count


class PageRejected(ValueError):
    """The page yields no candidates; ``reason`` is the reject reason of the ``extract`` stage."""

    reason = "page_rejected"


class NotHTMLError(PageRejected):
    """The body is not a decodable HTML document (binary garbage, NUL bytes)."""

    reason = "not_html"


class AIOptOut(PageRejected):
    """The page opts out of AI training (X-Robots-Tag, ``<meta name=robots>``, TDMRep); message = evidence."""

    reason = "ai_opt_out"


def normalise_alt(alt: str | None) -> str | None:
    """Collapse runs of whitespace (incl. NBSP and newlines) to one space and strip; None stays None."""
    if alt is None:
        return None
    return _WS.sub(" ", alt.replace("\u00a0", " ")).strip()


def decode_html(body: bytes, content_type_header: str | None) -> tuple[str, str]:
    """Decode an HTML body → (text, encoding name).

    Raises:
        NotHTMLError: the bytes contain NULs / control characters that no text document has.
    """
    if b"\x00" in body[:4096] and not body.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise NotHTMLError("NUL bytes in body")
    candidates: list[str] = []
    if body.startswith(b"\xef\xbb\xbf"):
        candidates.append("utf-8-sig")
    elif body.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates.append("utf-16")
    if content_type_header and "charset=" in content_type_header.lower():
        candidates.append(content_type_header.lower().split("charset=")[-1].split(";")[0].strip(" \"'"))
    m = _META_CHARSET.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii", "ignore").lower())
    for enc in candidates:
        try:
            return body.decode(enc), enc
        except (LookupError, UnicodeDecodeError):
            continue
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(body).best()
    if best is None:
        raise NotHTMLError("undecodable body")
    return str(best), best.encoding


_SRCSET_WS = " \t\n\r\x0c"


def _srcset_descriptors(value: str, pos: int) -> tuple[list[str], int]:
    """Tokenise the descriptors that start at ``pos`` (WHATWG "descriptor tokeniser": states *in
    descriptor*, *in parens*, *after descriptor*) → (descriptors, position after the candidate's comma)."""
    ws, n = _SRCSET_WS, len(value)
    descriptors: list[str] = []
    while pos < n and value[pos] in ws:
        pos += 1
    cur, state = "", "in"
    while True:
        c = value[pos] if pos < n else None
        if state == "in":
            if c is not None and c in ws:
                if cur:
                    descriptors.append(cur)
                    cur = ""
                state = "after"
            elif c == "," or c is None:
                if cur:
                    descriptors.append(cur)
                return descriptors, pos + (c == ",")
            else:
                cur += c
                state = "paren" if c == "(" else "in"
        elif state == "paren":
            if c is None:
                descriptors.append(cur)
                return descriptors, pos
            cur += c
            state = "in" if c == ")" else "paren"
        else:  # after descriptor
            if c is None:
                return descriptors, pos
            if c not in ws:
                state = "in"
                continue  # reconsume
        pos += 1


def _srcset_sizes(descriptors: list[str]) -> tuple[float | None, float | None] | None:
    """Descriptors of one candidate → (width px, density), or None for an invalid candidate (two
    width/density descriptors, a zero width, a negative density, a height without a width)."""
    width = density = height = None
    for d in descriptors:
        num, unit = d[:-1], d[-1:].lower()
        try:
            if unit == "w" and num.isdigit() and width is None and density is None:
                width = float(num)
                if width == 0:
                    return None
            elif unit == "x" and width is None and density is None and height is None:
                density = float(num)
                if density < 0:
                    return None
            elif unit == "h" and num.isdigit() and height is None and density is None:
                height = float(num)
            else:
                return None
        except ValueError:
            return None
    if height is not None and width is None:
        return None
    return width, density


def parse_srcset(value: str) -> list[tuple[str, float | None, float | None]]:
    """Parse a ``srcset`` attribute → ``[(url, width_px or None, density or None)]``, invalid candidates dropped.

    The WHATWG HTML "parse a srcset attribute" algorithm (section 4.8.4.3.10): URLs are runs of
    non-whitespace (so ``/cdn/w_800,h_600/x.png`` and ``data:image/png;base64,...`` keep their commas;
    trailing commas end a candidate); descriptors are tokenised with parentheses; a candidate with two
    width/density descriptors, a zero width or a negative density is dropped. Hand-written: no
    maintained Python package implements this algorithm (``srcset`` parsers on PyPI split on commas).
    """
    out: list[tuple[str, float | None, float | None]] = []
    pos, n = 0, len(value)
    while True:
        while pos < n and (value[pos] in _SRCSET_WS or value[pos] == ","):
            pos += 1
        if pos >= n:
            return out
        start = pos
        while pos < n and value[pos] not in _SRCSET_WS:
            pos += 1
        url = value[start:pos]
        descriptors: list[str] = []
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            descriptors, pos = _srcset_descriptors(value, pos)
        sizes = _srcset_sizes(descriptors)
        if sizes is not None and url:
            out.append((url, *sizes))


#: a ``data:`` srcset candidate with fewer decoded bytes than this is a placeholder (a 1x1 GIF is 43 bytes,
#: a 1x1 PNG ~70; the smallest real photo thumbnails are several KiB)
PLACEHOLDER_MAX_BYTES = 1024


def is_placeholder(url: str, width: float | None = None) -> bool:
    """A ``data:`` candidate that only holds a place for the real image: a declared width of 1 px, an
    undecodable URI, fewer than :data:`PLACEHOLDER_MAX_BYTES` bytes, or a 1x1/2x2 image by its header."""
    if not _is_data(url):
        return False
    if width is not None and width <= 2:
        return True
    try:
        data = parse_data_uri(url.strip()).data
    except (ValueError, TypeError):
        return True
    if len(data) < PLACEHOLDER_MAX_BYTES:
        return True
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width <= 2 and im.height <= 2
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _best_candidate(value: str | None) -> str | None:
    """Largest candidate of a srcset: by ``w`` (px), else by ``x`` density (none given = 1x), placeholders
    (:func:`is_placeholder`) only when nothing else is given."""
    if not value:
        return None
    cands = parse_srcset(value)
    real = [c for c in cands if not is_placeholder(c[0], c[1])]
    cands = real or cands  # a placeholder data: candidate never displaces a URL or a real data: image
    if not cands:
        return None
    return max(cands, key=lambda c: (c[1] is not None, c[1] or c[2] or 1.0))[0]


def _is_data(v: str | None) -> bool:
    return bool(v) and v.strip()[:5].lower() == "data:"


def _lazy_keys(a, suffix: str, known: tuple[str, ...] = ()) -> list[str]:
    """Lazy-loading attributes: ``known`` first, then any other ``data-*<suffix>`` (``data-lazyimage-srcset``)."""
    return [k for k in known if k in a] + sorted(
        k for k in a if k.startswith("data-") and k.endswith(suffix) and k not in known
    )


def _srcset_choice(a) -> str | None:
    """The candidate of ``srcset`` (largest), unless it is a ``data:`` placeholder and a lazy-loading
    variant (``data-srcset``, ``data-lazyimage-srcset`` ...) holds a real URL: lazy loaders put the
    placeholder in ``srcset`` and the real set beside it."""
    own = _best_candidate(a.get("srcset"))
    if own and not _is_data(own):
        return own
    for key in _lazy_keys(a, "srcset", ("data-srcset",)):
        best = _best_candidate(a.get(key))
        if best and not _is_data(best):
            return best
    return own


def _picture_source(node, dropped: Counter) -> str | None:
    """The ``<source>`` of the ``<picture>`` holding ``node`` to use (see module docstring), counting the others."""
    parent = node.parent
    if parent is None or parent.tag != "picture":
        return None
    usable = []
    for src in parent.iter():
        if src.tag != "source":
            continue
        a = src.attributes
        typ = (a.get("type") or "").split(";")[0].strip().lower()
        best = _srcset_choice(a)
        if best and (not typ or typ in _SUPPORTED_TYPES):
            usable.append((bool(a.get("media")), best))
        else:
            dropped["picture_source_skipped"] += 1
    if not usable:
        return None
    usable.sort(key=lambda u: u[0])  # stable: a source without media first
    dropped["picture_source_skipped"] += len(usable) - 1
    return usable[0][1]


def _image_src(node, dropped: Counter) -> str | None:
    """Source of one ``<img>``: the ``<picture>`` source, else the srcset choice, else the first real
    (non-``data:``) URL of the lazy-loading attributes and ``src``; a ``data:`` URL is used when no real
    one is given (a srcset's ``data:`` candidate yields to a real lazy ``data-src``, and a placeholder one
    (:func:`is_placeholder`) to a real ``src``)."""
    s = _picture_source(node, dropped)
    if s:
        return s
    a = node.attributes
    chosen = _srcset_choice(a)
    lazy = [a[k].strip() for k in _lazy_keys(a, "src", _LAZY_ATTRS) if a.get(k) and a[k].strip()]
    src = (a.get("src") or "").strip()
    if chosen and not _is_data(chosen):
        return chosen
    for v in lazy:
        if not _is_data(v):
            return v
    if chosen and not (src and not _is_data(src) and is_placeholder(chosen)):
        return chosen  # a data: image from srcset; a placeholder one yields to a real src
    return src if src and not _is_data(src) else (src or next(iter(lazy), None))


def data_image(uri: str, max_bytes: int = MAX_DATA_URI_BYTES) -> tuple[str, bytes | None, str | None]:
    """``data:`` URI → (stable image_url ``data:<type>;sha256,<hex>``, bytes, None) or (key, None, reason)."""
    if len(uri) > max_bytes * 4 // 3 + 1024:
        return "data:;sha256," + hashlib.sha256(uri.encode("utf-8", "replace")).hexdigest(), None, "data_uri_too_large"
    try:
        parsed = parse_data_uri(uri.strip())
    except (ValueError, TypeError):
        return "data:;sha256," + hashlib.sha256(uri.encode("utf-8", "replace")).hexdigest(), None, "data_uri_invalid"
    key = f"data:{parsed.media_type};sha256,{hashlib.sha256(parsed.data).hexdigest()}"
    if not parsed.data:
        return key, None, "data_uri_invalid"
    if len(parsed.data) > max_bytes:
        return key, None, "data_uri_too_large"
    return key, parsed.data, None


def _visible_text(tree: LexborHTMLParser) -> str:
    """Visible body text, one line per text block (scripts/styles removed)."""
    body = tree.body
    if body is None:
        return ""
    for bad in body.css("script, style, noscript, template"):
        bad.decompose()
    lines = (_WS.sub(" ", ln).strip() for ln in body.text(separator="\n").split("\n"))
    return "\n".join(ln for ln in lines if ln)


def text_language_shares(text: str, lid_model: str | None = None) -> dict[str, float]:
    """Share of the page's letters per language, by fastText on each text line (lines < 12 letters skipped).

    Technical pages mix target-language prose with English commands, so a single LID call on the
    whole page often answers ``en``; voting per line, weighted by letters, keeps the prose visible.
    A line whose top-1 is a *confusable* of a configured language (``hr`` for ``sr``, ``sk`` for ``cs``)
    counts for that language when the language is also in the line's top 3.
    Returns ``{code: share in [0, 1]}`` over the lines considered.
    """
    langs = load_languages()
    ft_to_code = {ft: code for code, lg in langs.items() for ft in lg.fasttext}
    weights: Counter = Counter()
    total = 0
    budget = PAGE_LID_CHARS * 4
    for line in text.split("\n"):
        letters = sum(ch.isalpha() for ch in line)
        if letters < 12:
            continue
        top = lid.predict(line, k=3, model_path=lid_model)
        if not top:
            continue
        code = ft_to_code.get(top[0][0], top[0][0])
        if code not in langs:
            for cand in (ft_to_code.get(lab) for lab, _ in top[1:]):
                if cand and top[0][0] in langs[cand].confusable:
                    code = cand
                    break
        weights[code] += letters
        total += letters
        budget -= len(line)
        if budget <= 0:
            break
    return {c: w / total for c, w in weights.items()} if total else {}


def page_language(
    declared: list[tuple[str, str]], text: str, lid_model: str | None = None
) -> tuple[str | None, str, list[str]]:
    """Decide a page's language from declared tags and its visible text → (code or None, evidence).

    Rule (paper 3.1.2: "HTML metadata and a language detection tool"):
    1. the first declared tag (``<html lang>``, meta, ``Content-Language``, body ``lang``) naming a
       configured language wins;
    2. otherwise the configured language with the largest letter share by line-level fastText
       (:func:`text_language_shares`) wins if its share is ≥ ``PAGE_TARGET_MIN_SHARE``;
    3. otherwise the declared (non-configured, e.g. ``en``) language, else the top language of the text.

    Also returns the page's *candidate* languages: the declared configured language, then every
    configured language with a line share ≥ ``PAGE_CANDIDATE_MIN_SHARE``, largest share first. The
    alt-text of each image is matched against these (``mella.stages.filters.langid.assign_language``).
    """
    langs = load_languages()
    shares = text_language_shares(text, lid_model)
    targets = {c: s for c, s in sorted(shares.items(), key=lambda kv: -kv[1]) if c in langs}
    candidates = [c for c, s in targets.items() if s >= PAGE_CANDIDATE_MIN_SHARE]
    first_declared = None
    for source, tag in declared:
        code = normalise_lang_tag(tag)
        if not code:
            continue
        if code in langs:
            return code, f"{source}:{code}", [code] + [c for c in candidates if c != code]
        first_declared = first_declared or (source, code)
    if targets:
        best = next(iter(targets))
        if targets[best] >= PAGE_TARGET_MIN_SHARE:
            return best, f"lid-lines:{best}({targets[best]:.2f})", candidates
    if first_declared:
        return first_declared[1], f"{first_declared[0]}:{first_declared[1]}", candidates
    if shares:
        best = max(shares, key=shares.get)
        return best, f"lid-lines:{best}({shares[best]:.2f})", candidates
    return None, "undetermined", candidates


def page_base(url: str, tree: LexborHTMLParser) -> str:
    """The URL relative references of a page resolve against: ``<base href>`` if usable, else ``url``."""
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        joined = normalise_url(url, base_node.attributes.get("href") or "")
        if joined:
            return joined
    return url


def page_links(base: str, tree: LexborHTMLParser, frames: bool = False) -> list[str]:
    """Normalised http(s) URLs of ``<a href>``/``<area href>`` (and ``<frame>``/``<iframe src>`` with
    ``frames``), in document order: the crawler's frontier."""
    sel = "a[href], area[href]" + (", frame[src], iframe[src]" if frames else "")
    out = []
    for node in tree.css(sel):
        u = normalise_url(base, node.attributes.get("href") or node.attributes.get("src") or "")
        if u:
            out.append(u)
    return out


def declared_languages(tree: LexborHTMLParser, content_language: str | None = None) -> list[tuple[str, str]]:
    """The page's declared language tags, strongest first, as ``[(source, tag)]``: ``<html lang>``/``xml:lang``,
    ``<meta>`` (content-language, language, dc.language, og:locale), the HTTP ``Content-Language``
    header, the most common ``lang`` inside ``<body>``."""
    declared: list[tuple[str, str]] = []
    html = tree.css_first("html")
    if html is not None:
        for key in ("lang", "xml:lang"):
            if html.attributes.get(key):
                declared.append(("html", html.attributes[key]))
    for meta in tree.css("meta"):
        a = meta.attributes
        name = (a.get("http-equiv") or a.get("name") or a.get("property") or "").lower()
        if name in ("content-language", "language", "dc.language", "og:locale") and a.get("content"):
            declared.append(("meta", a["content"]))
    if content_language:
        declared.append(("header", content_language))
    if tree.body is not None:
        inner = Counter(n.attributes.get("lang") for n in tree.body.css("[lang]") if n.attributes.get("lang"))
        if inner:
            declared.append(("body-lang", inner.most_common(1)[0][0]))
    return declared


def page_images(tree: LexborHTMLParser, base: str, dropped: Counter) -> list[ImageRef]:
    """One :class:`ImageRef` per distinct (image URL, alt-text) of the page's ``<img>`` elements, in document
    order. Counted in ``dropped``: ``img_without_src`` (no usable source attribute),
    ``image_url_unusable`` (a URL that does not resolve to http(s)), ``duplicate_on_page`` (an
    (image URL, alt) pair already taken from this page), ``picture_source_skipped``."""
    images: list[ImageRef] = []
    seen: set[tuple[str, str | None]] = set()
    for node in tree.css("img"):
        src = _image_src(node, dropped)
        if not src:
            dropped["img_without_src"] += 1
            continue
        data = err = None
        if _is_data(src):
            img_url, data, err = data_image(src)
        else:
            img_url = normalise_url(base, src)
        if not img_url:
            dropped["image_url_unusable"] += 1
            continue
        alt = normalise_alt(node.attributes.get("alt")) if "alt" in node.attributes else None
        if (img_url, alt) in seen:
            dropped["duplicate_on_page"] += 1
            continue
        seen.add((img_url, alt))
        images.append(ImageRef(img_url, alt, data, err))
    return images


def parse_page(
    url: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    lid_model: str | None = None,
    opt_out_directives=DEFAULT_DIRECTIVES,
    user_agent: str = "",
) -> Page:
    """Parse one HTML response into a :class:`Page`.

    Args:
        url: the page's final URL (after redirects).
        body: raw response body (bytes, any charset).
        headers: HTTP response headers (for ``Content-Type`` charset, ``Content-Language`` and opt-outs).
        opt_out_directives: X-Robots-Tag / meta robots directives that opt the page out (``crawl.ai_opt_out_directives``).
        user_agent: our User-Agent (directives addressed to its product token apply too).

    Raises:
        NotHTMLError: the body cannot be decoded as a text document.
        AIOptOut: the page opts out of AI training (see module docstring).
    """
    hdr = {k.lower(): v for k, v in (headers or [])}
    why = header_opt_out(headers or [], opt_out_directives, user_agent)
    if why:
        raise AIOptOut(why)
    text, enc = decode_html(body, hdr.get("content-type"))
    tree = LexborHTMLParser(text)
    url = normalise_url(None, url) or url
    base = page_base(url, tree)
    metas = [
        ((m.attributes.get("name") or "").strip().lower(), m.attributes.get("content") or "")
        for m in tree.css("meta[name][content]")
    ]
    why = meta_opt_out(metas, opt_out_directives, user_agent)
    if why:
        raise AIOptOut(why)

    declared = declared_languages(tree, hdr.get("content-language"))
    dropped: Counter = Counter()
    images = page_images(tree, base, dropped)

    title = tree.css_first("title")
    vis = _visible_text(tree)
    if title is not None and title.text(strip=True):
        vis = _WS.sub(" ", title.text()).strip() + "\n" + vis
    lang, evidence, candidates = page_language(declared, vis, lid_model)
    return Page(
        url=url,
        lang=lang,
        lang_evidence=evidence,
        candidate_langs=candidates,
        images=images,
        dropped=dropped,
    )


class ExtractStage(Stage):
    """The source stage: WARC files → one candidate row per ``<img>`` of every target-language page.

    HTML ``200`` responses are parsed (:func:`parse_page`, AI-training opt-outs honoured); each image
    gets its language from the page's candidate languages
    (:func:`mella.stages.filters.langid.assign_language`). Pages whose language is not a target, whose
    bytes are not HTML, or that opt out become one reject row each (``image_url`` null, reasons
    ``page_lang_not_target`` / ``not_html`` / ``ai_opt_out``). Per-file page counts and the image
    candidates a page drops (``dropped:<reason>``) go to ``stats_dir/pages-<sha1>.json`` for the
    funnel. Runs as Ray tasks, one slice of a WARC file (``RayConfig.records_per_slice`` responses) per task.
    """

    name = "extract"
    writes = (
        "id",
        "lang",
        "page_url",
        "image_url",
        "alt_text",
        "page_lang",
        "source",
        "image",  # image: data: URIs
        "warc_filename",
        "warc_record_offset",
        "warc_record_length",
    )
    rejects = True
    pages_per_batch = 16

    def __init__(
        self, langs: list[str], langid_cfg, opt_out_directives=DEFAULT_DIRECTIVES, user_agent: str | None = None
    ) -> None:
        self.targets = set(langs)
        self.langid_cfg = langid_cfg
        self.opt_out_directives = list(opt_out_directives)
        self.user_agent = user_agent

    def read(self, path: str, source: str, stats_dir: str, offset: int = 0, limit: int | None = None):
        """Yield lists of row dicts (REJECT_SCHEMA keys), ``pages_per_batch`` pages at a time, from the
        response records of ``path`` starting at byte ``offset`` (at most ``limit``; see
        :func:`mella.warc.slice_offsets`). A file that stops being readable WARC (truncated, corrupt
        gzip) ends its slice there, counted as ``dropped:warc_unreadable`` in the page stats."""
        import logging

        from mella.ccindex import load_provenance
        from mella.io import write_json_atomic
        from mella.warc import WARC_READ_ERRORS, iter_responses

        stats: Counter = Counter()
        rows: list[dict] = []
        n_pages = 0
        cc = load_provenance(path)  # a Common Crawl copy: rows name Common Crawl's record
        records = iter_responses(path, offset, limit)
        while True:
            try:
                rec = next(records)
            except StopIteration:
                break
            except WARC_READ_ERRORS as e:
                logging.getLogger(__name__).warning(
                    "%s: unreadable WARC after byte %d (%s: %s); rest of the slice skipped",
                    path,
                    offset,
                    type(e).__name__,
                    e,
                )
                stats["dropped:warc_unreadable"] += 1
                break
            skip = record_skip_reason(rec)
            if skip:
                stats[f"records_skipped:{skip}"] += 1
                continue
            n_pages += 1
            stats["pages_in"] += 1
            rows.extend(self.page_rows(rec, source, stats, cc.get(rec.offset)))
            if n_pages % self.pages_per_batch == 0 and rows:
                yield rows
                rows = []
        if rows:
            yield rows
        name = hashlib.sha1(f"{path}@{offset}".encode()).hexdigest()[:16]
        write_json_atomic({"path": path, "offset": offset, **stats}, os.path.join(stats_dir, f"pages-{name}.json"))

    def page_rows(self, rec, source: str, stats: Counter, origin: tuple[str, int, int] | None = None) -> list[dict]:
        """Rows of one HTML response record (:class:`mella.warc.WarcResponse`): one per image candidate of a
        target-language page, else one reject row; updates the page counters in ``stats``
        (``pages_out:<lang>``, ``pages_rejected:<reason>``, ``dropped:<reason>``, ``images_out``).
        ``origin``: the record's (WARC file, offset, length) where it came from (Common Crawl), else its own."""
        from mella.schema import record_id
        from mella.stages.base import reject
        from mella.stages.filters.langid import assign_language

        name, first, length = origin or (os.path.basename(rec.path) or None, rec.offset, rec.length)
        prov = {
            "source": source,
            "warc_filename": name,
            "warc_record_offset": first if first >= 0 else None,
            "warc_record_length": length if length >= 0 else None,
        }
        try:
            page = parse_page(
                rec.url, rec.body, rec.headers, self.langid_cfg.model_path, self.opt_out_directives, self.user_agent
            )
        except PageRejected as e:
            row = {"id": record_id(None, rec.url, None), "page_url": rec.url, **prov}
            reject(row, self.name, e.reason, str(e))
            stats[f"pages_rejected:{e.reason}"] += 1
            return [row]
        stats.update({f"dropped:{k}": v for k, v in page.dropped.items()})
        cands = [c for c in page.candidate_langs if c in self.targets]
        if not cands:
            lang = page.lang or "und"
            row = {
                "id": record_id(lang, rec.url, None),
                "lang": lang,
                "page_url": rec.url,
                "page_lang": page.lang_evidence,
                **prov,
            }
            reject(row, self.name, "page_lang_not_target", page.lang_evidence)
            stats[f"pages_rejected:page_lang_not_target:{lang}"] += 1
            return [row]
        stats[f"pages_out:{cands[0]}"] += 1
        rows = []
        for ref in page.images:
            lang = assign_language(ref.alt_text, cands, self.langid_cfg)
            rows.append(
                {
                    "id": record_id(lang, rec.url, ref.image_url),
                    "lang": lang,
                    "page_url": rec.url,
                    **ref.row_fields(),
                    "page_lang": page.lang_evidence,
                    **prov,
                }
            )
        stats["images_out"] += len(rows)
        return rows


def record_skip_reason(rec) -> str | None:
    """Why a WARC response record is no page to extract (counted ``records_skipped:<reason>``), or None:
    ``http_<status>`` for a status other than 200, ``not_html`` for another media type (images, robots.txt)."""
    if rec.status != 200:
        return f"http_{rec.status}"
    if rec.content_type not in ("text/html", "application/xhtml+xml"):
        return "not_html"
    return None
