"""Extraction (paper 3.1.1): HTML page → image candidates with their alt-text, page language, links.

Parsing is selectolax (lexbor, an HTML5-conformant parser that recovers from broken markup the way
browsers do). Decoding follows the HTML encoding sniffing order (WHATWG "determining the character
encoding"): BOM, HTTP ``Content-Type`` charset, ``<meta charset>``/``http-equiv``; when none is given
or it fails to decode, ``charset-normalizer`` detects it (legacy charsets such as windows-1251).

Image URL per ``<img>`` (resolved against ``<base href>``, else the page URL): the largest
``srcset``/``data-srcset`` candidate (by ``w`` descriptor, else ``x``), else a lazy-loading attribute
(``data-src``, ``data-lazy-src``, ``data-original``), else ``src``. ``data:`` URIs are skipped.

Page language evidence, strongest first: ``<html lang>``/``xml:lang``, ``<meta http-equiv=content-language>``
and ``<meta name=language|dc.language>``, ``og:locale``, the HTTP ``Content-Language`` header, the
most common ``lang`` attribute inside ``<body>``, and fastText on the page's visible text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urljoin, urlsplit

import charset_normalizer
from selectolax.lexbor import LexborHTMLParser

from mella import lid
from mella.languages import load_languages, normalise_lang_tag
from mella.stages.base import Stage

_WS = re.compile(r"\s+")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url")
_SKIP_LINK_SCHEMES = ("javascript:", "mailto:", "tel:", "data:", "ftp:", "help:", "file:")

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


@dataclass
class Page:
    """What extraction learns from one page."""

    url: str
    text: str
    lang: str | None  # decided language code (any language, not only targets)
    lang_evidence: str  # e.g. "html:hu", "lid-lines:th(0.97)"
    candidate_langs: list[str] = field(default_factory=list)  # configured languages present, best first
    images: list[ImageRef] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    encoding: str = "utf-8"


class NotHTMLError(ValueError):
    """The body is not a decodable HTML document (binary garbage, NUL bytes)."""


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


def _largest_srcset(value: str | None) -> str | None:
    if not value:
        return None
    best, best_score = None, -1.0
    for cand in value.split(","):
        parts = cand.strip().split()
        if not parts:
            continue
        score = 1.0
        if len(parts) > 1:
            d = parts[1].lower()
            try:
                score = float(d[:-1]) * (1.0 if d.endswith("w") else 1000.0 if d.endswith("x") else 1.0)
            except ValueError:
                score = 1.0
            if d.endswith("x"):
                score = float(d[:-1] or 1) * 1000.0 if d[:-1].replace(".", "", 1).isdigit() else 1000.0
        if score > best_score:
            best, best_score = parts[0], score
    return best


def _image_src(node) -> str | None:
    a = node.attributes
    for key in ("srcset", "data-srcset"):
        s = _largest_srcset(a.get(key))
        if s and not s.startswith("data:"):
            return s
    for key in _LAZY_ATTRS:
        v = a.get(key)
        if v and v.strip() and not v.strip().startswith("data:"):
            return v.strip()
    v = a.get("src")
    if v and v.strip() and not v.strip().startswith("data:"):
        return v.strip()
    return None


def _clean_url(base: str, href: str) -> str | None:
    href = href.strip()
    if not href or href.lower().startswith(_SKIP_LINK_SCHEMES) or href.startswith("#"):
        return None
    try:
        url = urldefrag(urljoin(base, href))[0]
    except ValueError:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


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


def parse_page(
    url: str, body: bytes, headers: list[tuple[str, str]] | None = None, lid_model: str | None = None
) -> Page:
    """Parse one HTML response into a :class:`Page`.

    Args:
        url: the page's final URL (after redirects).
        body: raw response body (bytes, any charset).
        headers: HTTP response headers (for ``Content-Type`` charset and ``Content-Language``).

    Raises:
        NotHTMLError: the body cannot be decoded as a text document.
    """
    hdr = {k.lower(): v for k, v in (headers or [])}
    text, enc = decode_html(body, hdr.get("content-type"))
    tree = LexborHTMLParser(text)
    base = url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        joined = _clean_url(url, base_node.attributes.get("href") or "")
        if joined:
            base = joined

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
    if hdr.get("content-language"):
        declared.append(("header", hdr["content-language"]))
    if tree.body is not None:
        inner = Counter(n.attributes.get("lang") for n in tree.body.css("[lang]") if n.attributes.get("lang"))
        if inner:
            declared.append(("body-lang", inner.most_common(1)[0][0]))

    images: list[ImageRef] = []
    seen: set[tuple[str, str | None]] = set()
    for node in tree.css("img"):
        src = _image_src(node)
        if not src:
            continue
        img_url = _clean_url(base, src)
        if not img_url:
            continue
        alt = normalise_alt(node.attributes.get("alt")) if "alt" in node.attributes else None
        if (img_url, alt) in seen:
            continue
        seen.add((img_url, alt))
        images.append(ImageRef(img_url, alt))

    links: list[str] = []
    for node in tree.css("a[href], area[href]"):
        u = _clean_url(base, node.attributes.get("href") or "")
        if u:
            links.append(u)

    title = tree.css_first("title")
    vis = _visible_text(tree)
    if title is not None and title.text(strip=True):
        vis = _WS.sub(" ", title.text()).strip() + "\n" + vis
    lang, evidence, candidates = page_language(declared, vis, lid_model)
    return Page(
        url=url,
        text=vis,
        lang=lang,
        lang_evidence=evidence,
        candidate_langs=candidates,
        images=images,
        links=links,
        encoding=enc,
    )


class ExtractStage(Stage):
    """The source stage: WARC files → one candidate row per ``<img>`` of every target-language page.

    HTML ``200`` responses are parsed (:func:`parse_page`); each image gets its language from the
    page's candidate languages (:func:`mella.stages.filters.langid.assign_language`). Pages whose
    language is not a target, or whose bytes are not HTML, become one reject row each
    (``image_url`` null, reasons ``page_lang_not_target`` / ``not_html``). Per-file page counts go
    to ``stats_dir/pages-<sha1>.json`` for the funnel. Runs as Ray tasks, one WARC file per task.
    """

    name = "extract"
    writes = ("id", "lang", "page_url", "image_url", "alt_text", "page_lang", "source")
    rejects = True
    pages_per_batch = 16

    def __init__(self, langs: list[str], langid_cfg) -> None:
        self.targets = set(langs)
        self.langid_cfg = langid_cfg

    def read(self, path: str, source: str, stats_dir: str):
        """Yield lists of row dicts (REJECT_SCHEMA keys), ``pages_per_batch`` pages at a time."""
        import hashlib
        import os
        from collections import Counter

        from mella.io import write_json_atomic
        from mella.schema import record_id
        from mella.stages.base import reject
        from mella.stages.filters.langid import assign_language
        from mella.warc import iter_responses

        stats: Counter = Counter()
        rows: list[dict] = []
        n_pages = 0
        for rec in iter_responses(path):
            if rec.status != 200 or rec.content_type not in ("text/html", "application/xhtml+xml"):
                continue
            n_pages += 1
            stats["pages_in"] += 1
            try:
                page = parse_page(rec.url, rec.body, rec.headers, self.langid_cfg.model_path)
            except NotHTMLError as e:
                row = {"id": record_id(None, rec.url, None), "page_url": rec.url, "source": source}
                reject(row, self.name, "not_html", str(e))
                rows.append(row)
                stats["pages_rejected:not_html"] += 1
            else:
                cands = [c for c in page.candidate_langs if c in self.targets]
                if not cands:
                    lang = page.lang or "und"
                    row = {"id": record_id(lang, rec.url, None), "lang": lang, "page_url": rec.url,
                           "page_lang": page.lang_evidence, "source": source}
                    reject(row, self.name, "page_lang_not_target", page.lang_evidence)
                    rows.append(row)
                    stats[f"pages_rejected:page_lang_not_target:{lang}"] += 1
                else:
                    stats[f"pages_out:{cands[0]}"] += 1
                    for ref in page.images:
                        lang = assign_language(ref.alt_text, cands, self.langid_cfg)
                        rows.append({"id": record_id(lang, rec.url, ref.image_url), "lang": lang,
                                     "page_url": rec.url, "image_url": ref.image_url, "alt_text": ref.alt_text,
                                     "page_lang": page.lang_evidence, "source": source})
            if n_pages % self.pages_per_batch == 0 and rows:
                yield rows
                rows = []
        if rows:
            yield rows
        name = hashlib.sha1(path.encode()).hexdigest()[:16]
        write_json_atomic({"path": path, **stats}, os.path.join(stats_dir, f"pages-{name}.json"))
