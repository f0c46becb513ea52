"""The one URL normaliser of the platform: every URL is normalised once, where it is extracted.

Keys (row ids, the crawl frontier), robots.txt and TDMRep caches, politeness and the WARC lookups all
see the same spelling of a URL, so ``HTTP://Example.COM:80/a/../x y.png#top`` and
``http://example.com/x%20y.png`` are one URL. Built on ``yarl`` (aiohttp's URL library, maintained by
aio-libs), which implements RFC 3986 resolution and normalisation:

- reference resolution against the base (RFC 3986 5.2), dot segments removed;
- scheme and host lower-cased; hosts IDNA-encoded with UTS #46 mapping (what browsers do: full-width
  ``ｅｘａｍｐｌｅ．ｃｏｍ`` → ``example.com``, ``bücher.de`` → ``xn--bcher-kva.de``);
- default ports dropped (``:80`` for http, ``:443`` for https);
- percent-encoding normalised (non-ASCII and spaces encoded as UTF-8 ``%XX``, unreserved characters
  such as ``%7E`` decoded);
- the fragment dropped (it is never sent to the server).

WHATWG URL parsing also strips leading/trailing C0-control-or-space and removes every ASCII tab or
newline inside the string (URL Standard, "basic URL parser", steps 1–3); that is done here first.
"""

from __future__ import annotations

import re

from yarl import URL

_TAB_NL = re.compile(r"[\t\n\r]")
#: href schemes that never lead to a fetchable page or image
SKIP_SCHEMES = ("javascript:", "mailto:", "tel:", "ftp:", "help:", "file:", "about:", "blob:")


def normalise_url(base: str | None, href: str) -> str | None:
    """Resolve ``href`` against ``base`` (None: ``href`` must be absolute) and normalise it.

    Returns the normalised absolute ``http``/``https`` URL (str), or None when ``href`` is empty, a
    fragment-only reference, another scheme (``mailto:``, ``data:`` ...) or unparsable (bad IDNA,
    bad port).
    """
    href = _TAB_NL.sub(
        "",
        href.strip(
            " \x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x11\x12\x13"
            "\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\t\n\r"
        ),
    )
    if not href or href.startswith("#") or href.lower().startswith(SKIP_SCHEMES + ("data:",)):
        return None
    try:
        url = URL(base).join(URL(href)) if base else URL(href)
        if url.scheme not in ("http", "https") or not url.raw_host:
            return None
        return str(url.with_fragment(None))
    except (ValueError, UnicodeError, TypeError):
        return None


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a normalised URL (default port omitted): the key of robots.txt,
    TDMRep and per-host counts (RFC 6454 origin). Raises ``ValueError`` for a URL without a host."""
    u = URL(url)
    if not u.raw_host:
        raise ValueError(f"URL without host: {url!r}")
    return str(u.origin())
