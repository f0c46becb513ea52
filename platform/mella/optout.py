"""AI-training opt-outs, honoured as img2dataset does by default (its ``--disallowed_header_directives``).

Three forms, each makes a page or image yield no row (reason ``ai_opt_out``):

- ``X-Robots-Tag`` response header (Google's robots meta/header spec; ``noai``/``noimageai`` from
  DeviantArt's proposal, adopted by img2dataset): comma-separated directives, optionally prefixed by
  a user-agent token (``otherbot: noindex`` applies to ``otherbot`` only). The disallowed directives
  are configurable (``crawl.ai_opt_out_directives``; default img2dataset's: ``noai``, ``noimageai``,
  ``noindex``, ``noimageindex``);
- ``<meta name="robots" content="...">`` (or ``name=`` our user-agent token) in a page, same directives;
- the TDM Reservation Protocol (W3C TDMRep Community Group final report, 2024): a
  ``tdm-reservation: 1`` response header, or a rule of the origin's ``/.well-known/tdmrep.json``
  (``[{"location": "/path/*", "tdm-reservation": 1, "tdm-policy": "..."}]``) whose ``location`` pattern
  matches the URL path (``*`` any characters, ``$`` end, as robots.txt patterns; first matching rule wins).

Functions here are pure: :mod:`mella.net` fetches ``tdmrep.json`` and calls them.
"""

from __future__ import annotations

import json
import re

#: img2dataset's default ``--disallowed_header_directives``
DEFAULT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


def ua_token(user_agent: str) -> str:
    """Product token of a User-Agent string, lower-cased (``"MELLA-corpus-builder/0.1 (...)"`` → ``"mella-corpus-builder"``)."""
    return user_agent.split("/", 1)[0].split()[0].lower() if user_agent.strip() else ""


_COLON_DIRECTIVES = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


def _directives_hit(value: str, directives, token: str) -> str | None:
    head, sep, rest = value.partition(":")
    head = head.strip().lower()
    if sep and re.fullmatch(r"[a-z0-9_\-]+", head) and head not in _COLON_DIRECTIVES:
        if head != token:
            return None  # "otherbot: noindex": directives for another crawler
        value = rest
    found = {d.strip().lower() for d in value.split(",")}
    hit = [d for d in directives if d in found]
    return hit[0] if hit else None


def header_opt_out(headers: list[tuple[str, str]], directives=DEFAULT_DIRECTIVES, user_agent: str = "") -> str | None:
    """Detail string (``"X-Robots-Tag: noai"``, ``"tdm-reservation: 1"``) if the response headers opt out, else None."""
    token = ua_token(user_agent)
    for k, v in headers:
        k = k.lower()
        if k == "x-robots-tag":
            d = _directives_hit(v, directives, token)
            if d:
                return f"X-Robots-Tag: {d}"
        elif k == "tdm-reservation" and v.strip() == "1":
            return "tdm-reservation: 1"
    return None


def meta_opt_out(metas: list[tuple[str, str]], directives=DEFAULT_DIRECTIVES, user_agent: str = "") -> str | None:
    """``metas``: ``(name, content)`` of a page's ``<meta>`` elements (names lower-cased). Detail or None."""
    token = ua_token(user_agent)
    for name, content in metas:
        if name in ("robots", token):
            d = _directives_hit(content, directives, token)
            if d:
                return f'<meta name="{name}">: {d}'
        elif name == "tdm-reservation" and content.strip() == "1":
            return '<meta name="tdm-reservation">: 1'
    return None


def parse_tdmrep(body: bytes) -> list[tuple[re.Pattern, bool]]:
    """``/.well-known/tdmrep.json`` → ``[(compiled location pattern, reserved)]``; [] when malformed."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return []
    rules = []
    for rule in data if isinstance(data, list) else []:
        if not isinstance(rule, dict) or not isinstance(rule.get("location"), str):
            continue
        loc = rule["location"].strip() or "/"
        anchored = loc.endswith("$")
        pat = ".*".join(re.escape(p) for p in loc.rstrip("$").split("*"))
        rules.append((re.compile(pat + ("$" if anchored else "")), str(rule.get("tdm-reservation")) == "1"))
    return rules


def tdmrep_reserved(rules: list[tuple[re.Pattern, bool]], path_and_query: str) -> bool:
    """True when the first rule whose location matches (from the start of) the path reserves TDM rights."""
    if not path_and_query.startswith("/"):
        path_and_query = "/" + path_and_query
    for pat, reserved in rules:
        if pat.match(path_and_query):
            return reserved
    return False
