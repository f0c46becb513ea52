"""Real aiohttp web servers on 127.0.0.1 for crawler tests (a helper module, not a conftest).

Each server runs in a background thread with its own asyncio event loop, on a free port of
127.0.0.1, and is shut down cleanly (in-flight handlers cancelled, loop closed) when its context
manager exits. Both context managers yield the base URL (``http://127.0.0.1:PORT``, no trailing
slash) as a :class:`ServerURL`, a ``str`` that also carries ``.hits``: a ``collections.Counter``
of requests per path, so tests can check retries (``url.hits["/p/flaky.html"] == 2``).

``serve_directory(root, robots_txt=ALLOW_ALL)``
    Serves the files under ``root`` statically (aiohttp ``add_static``; content types from
    ``mimetypes``: ``.html`` -> text/html, ``.png`` -> image/png, ``.svg`` -> image/svg+xml ...),
    plus ``/robots.txt`` with the given text (default: allow everything). Use it for
    ``../shared/miniweb`` and the repository's ``demo_web/``.

``serve_bad_web(...)``
    A small Hungarian site (plus three Russian windows-1251 pages) in which every path exercises
    one bad-input class. Real images come from the PAIRS_expected.tsv rows of ``source_web``
    (default: the repository's ``demo_web/``, a Debian-licensed subset of ``../shared/miniweb``;
    pass ``source_web=Path("../shared/miniweb")`` to use the full miniweb). ``robots.txt``
    disallows ``/private/``. ``/`` and ``/index.html`` link to every page below.

    Expected outcome of a correct pipeline, path by path ("kept" = a D_know row; otherwise the
    reject ``reason``; ``N`` defaults are the keyword arguments of ``serve_bad_web``):

    ====================================  =========================================================  ==========================
    path                                  what the server does                                       expected
    ====================================  =========================================================  ==========================
    ``/p/ok.html``                        valid ``<html lang="hu">`` page, one real PNG > 256 px       1 kept (hu)
                                          (``/img/ok.png``) with its genuine Hungarian alt
    ``/p/404.html``                       404                                                        ``http_404``
    ``/p/500.html``                       500 on every request                                       ``http_500`` (retries spent)
    ``/p/flaky.html``                     500 for the first ``flaky_failures`` requests, then a      1 kept after retry
                                          valid hu page (``/img/flakypage.png``)                     (``http_500`` if no retry)
    ``/p/ratelimited.html``               429 + ``Retry-After: 1`` for the first                     1 kept after retry
                                          ``flaky_failures`` requests, then a valid hu page          (``http_429`` if no retry)
    ``/p/slow.html``                      waits ``slow_s`` seconds before answering (valid page)     ``timeout`` (read timeout
                                                                                                     < ``slow_s``)
    ``/p/loop1.html``                     302 -> ``/p/loop2.html`` -> 302 -> ``/p/loop1.html``        ``redirect_loop``
    ``/p/redirect/0.html``                302 chain 0 -> 1 -> ... -> ``redirect_chain`` (a valid      ``too_many_redirects``
                                          page), no loop                                             (limit < ``redirect_chain``)
    ``/private/secret.html``              valid hu page, but disallowed by robots.txt                ``robots_disallowed``
    ``/p/big.html``                       text/html, ``big_html_bytes`` bytes, with Content-Length    ``too_large``
    ``/p/big-chunked.html``               same, chunked (no Content-Length: cap while streaming)     ``too_large``
    ``/p/document.pdf``                   linked page served as ``application/pdf``                 ``content_type``
    ``/p/broken.html``                    badly broken but recoverable HTML (unclosed tags, stray     1 kept (hu)
                                          ``</div>``, unquoted attributes, no ``</body>``); its
                                          ``<img>`` (``/img/broken.png``) is valid with a hu alt
    ``/p/garbage.html``                   4 KiB of random bytes as ``text/html``                      ``not_html``
    ``/p/cp1251.html``                    Russian page in windows-1251, charset only in the HTTP      1 kept (ru) with the
                                          header; ``<img>`` with a Russian alt                        alt decoded correctly
    ``/p/cp1251-meta.html``               same, charset only in ``<meta charset=windows-1251>``       1 kept (ru)
    ``/p/cp1251-nodecl.html``             same, no charset declared anywhere (detect it)             1 kept (ru)
    ``/p/img-<case>.html``                a valid hu page whose only ``<img>`` is ``/img/<case>.*``   see image rows below
                                          with a Hungarian alt
    ``/p/images.html``                    a valid hu page with all the ``/img/`` cases below          as below, one per image
    ``/img/ok.png``                       the real PNG of ``/p/ok.html``                             kept
    ``/img/notimage.png``                 an HTML document served as ``text/html``                   ``content_type``
    ``/img/truncated.png``                the first half of a real PNG, ``image/png``                ``truncated``
    ``/img/bomb.png``                     ~110 KB 1-bit PNG that decodes to ``bomb_side``^2 px        ``decompression_bomb``
                                          (30000 x 30000 = 9e8 px > 2 x Pillow's MAX_IMAGE_PIXELS)
    ``/img/huge.jpg``                     a real JPEG padded to ``huge_image_bytes``, streamed,       ``too_large``
                                          with Content-Length
    ``/img/huge-chunked.jpg``             same, chunked                                              ``too_large``
    ``/img/vector.svg``                   a real 512 x 512 SVG, ``image/svg+xml``                    ``format_svg``
    ``/img/404.png``                      404                                                        ``http_404``
    ``/img/flaky.png``                    503 for the first ``flaky_failures`` requests, then a      kept after retry
                                          real PNG                                                   (``http_503`` if no retry)
    ``/img/slow.png``                     waits ``slow_s`` seconds, then a real PNG                   ``timeout``
    *any path*                            the server is on 127.0.0.1                                 ``private_address`` unless
                                                                                                     ``--allow-private-hosts``
    ====================================  =========================================================  ==========================

    Every real image on the site is a different picture. ``/p/images.html`` repeats the image URLs
    of the ``/p/img-*.html`` pages, so a full crawl meets each of them twice (exact duplicates).
    A full crawl from ``/`` with retries, a read timeout below ``slow_s`` and a redirect limit
    below ``redirect_chain`` should keep exactly 8 D_know rows: hu ``/img/ok.png``,
    ``/img/flakypage.png``, ``/img/ratelimited.png``, ``/img/broken.png``, ``/img/flaky.png`` and
    ru ``/img/cp1251.png``, ``/img/cp1251-meta.png``, ``/img/cp1251-nodecl.png``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import functools
import io
import random
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO_WEB = REPO / "demo_web"
ALLOW_ALL = "User-agent: *\nDisallow:\n"
BAD_WEB_ROBOTS = "User-agent: *\nDisallow: /private/\n"

# Real images of the bad web: path in the source web's PAIRS_expected.tsv (alt comes from there).
_HU_IMAGES = {
    "ok": "hu/omegat-manual/images/SpellcheckingText.png",
    "flakypage": "hu/omegat-manual/images/SpellcheckerSetup2.png",
    "ratelimited": "hu/libreoffice-help/media/helpimg/sd_drawing_with_comment.png",
    "slowpage": "hu/libreoffice-help/media/helpimg/sdraw/control_points.png",
    "broken": "hu/bibletime-handbook/ss_configfonts.png",
    "secret": "hu/libreoffice-help/media/screenshots/modules/smath/ui/fontdialog/hu/FontDialog.png",
    "chainend": "hu/libreoffice-help/media/helpimg/si_presentation_with_comment.png",
    "flaky": "hu/libreoffice-help/media/screenshots/modules/smath/ui/fonttypedialog/hu/FontsDialog.png",
    "slow": "hu/omegat-manual/images/TagValidator.png",
    "truncated": "hu/omegat-manual/images/NewProject.png",  # served cut in half
    "huge": "hu/omegat-manual/images/MatchesPane.png",  # re-encoded as JPEG, then padded
}
_RU_IMAGES = {
    "cp1251": "ru/omegat-manual/images/SpellcheckerSetup_25.png",
    "cp1251-meta": "ru/omegat-manual/images/SpellcheckingText.png",
    "cp1251-nodecl": "ru/omegat-manual/images/MatchesPane_25.png",
}
# Hungarian alt texts written for the bad images (the real ones use their PAIRS_expected alt).
_HU_ALTS = {
    "notimage": "Képernyőkép a nyomtatási beállítások párbeszédablakáról",
    "truncated": "Az új projekt létrehozására szolgáló párbeszédablak",
    "bomb": "Hatalmas, egyszínű fekete kép egy üres vászonról",
    "huge": "Az egyezések panel a fordítóprogram ablakának alján",
    "huge-chunked": "Az egyezések panel nagy felbontású képernyőképe",
    "vector": "Vektoros ábra: kék kör egy sárga négyzet közepén",
    "404": "A fordítási memória ablaka, amely már nem érhető el",
}
_IMG_CASES = {  # case -> (path, expected)
    "ok": ("/img/ok.png", "kept"),
    "notimage": ("/img/notimage.png", "content_type"),
    "truncated": ("/img/truncated.png", "truncated"),
    "bomb": ("/img/bomb.png", "decompression_bomb"),
    "huge": ("/img/huge.jpg", "too_large"),
    "huge-chunked": ("/img/huge-chunked.jpg", "too_large"),
    "vector": ("/img/vector.svg", "format_svg"),
    "404": ("/img/404.png", "http_404"),
    "flaky": ("/img/flaky.png", "kept after retry"),
    "slow": ("/img/slow.png", "timeout"),
}
IMG_CASES = {case: path for case, (path, _) in _IMG_CASES.items()}
EXPECTED_IMAGE_REASON = {path: why for path, why in _IMG_CASES.values()}

_HU_PROSE = (
    "<p>Ez az oldal egy kis próbawebhely része, amelyet a webes adatgyűjtő tesztelésére "
    "készítettünk. A helyesírás-ellenőrző segít megtalálni az elgépelt szavakat, mielőtt a "
    "fordítást elküldjük a megrendelőnek.</p>\n<p>A beállítások között kiválaszthatjuk a szótár "
    "nyelvét, és megadhatjuk, hogy a program mely szavakat hagyja figyelmen kívül. A képek alatti "
    "leírások magyar nyelvűek, ahogyan a valódi weboldalakon is.</p>\n"
)
_RU_PROSE = (
    "<p>Эта страница входит в небольшой тестовый сайт, созданный для проверки веб-сборщика. "
    "Текст набран в кодировке windows-1251, которая до сих пор встречается на старых "
    "русскоязычных сайтах, форумах и в архивах новостей.</p>\n<p>Программа проверки орфографии "
    "помогает найти опечатки до того, как перевод будет отправлен заказчику. В настройках можно "
    "выбрать язык словаря и указать слова, которые следует пропускать при проверке.</p>\n"
    "<p>Подписи к изображениям написаны на русском языке, как и на настоящих сайтах.</p>\n"
)

_SVG = b"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512">
  <title>K\xc3\xa9k k\xc3\xb6r egy s\xc3\xa1rga n\xc3\xa9gyzetben</title>
  <rect x="0" y="0" width="512" height="512" fill="#f2c500"/>
  <circle cx="256" cy="256" r="160" fill="#1f5fbf" stroke="#0b2f66" stroke-width="12"/>
</svg>
"""


class ServerURL(str):
    """Base URL of a running test server (``http://127.0.0.1:PORT``) with a request counter.

    ``hits``: ``collections.Counter`` mapping request path -> number of requests received;
    ``hits_qs``: the same keyed by path and query (``/index.html?sid=1``); ``times``: path -> the
    ``time.monotonic()`` of each request's arrival (seconds).
    """

    hits: collections.Counter
    hits_qs: collections.Counter
    times: dict


class _ServerThread:
    """Runs an aiohttp ``web.Application`` on 127.0.0.1:<free port> in a thread with its own loop."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-webserver", daemon=True)
        self.runner: web.AppRunner | None = None

    async def _start(self) -> int:
        # shutdown_timeout: how long cleanup waits for in-flight (slow, streaming) handlers.
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]

    async def _stop(self) -> None:
        await self.runner.cleanup()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> int:
        self.thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        try:
            if self.runner is not None:
                asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


@contextlib.contextmanager
def _running(app: web.Application) -> Iterator[ServerURL]:
    hits: collections.Counter = collections.Counter()
    hits_qs: collections.Counter = collections.Counter()
    times: dict[str, list[float]] = collections.defaultdict(list)

    @web.middleware
    async def count(request: web.Request, handler):
        hits[request.path] += 1
        hits_qs[request.path_qs] += 1
        times[request.path].append(time.monotonic())
        return await handler(request)

    app.middlewares.append(count)
    with _ServerThread(app) as port:
        url = ServerURL(f"http://127.0.0.1:{port}")
        url.hits, url.hits_qs, url.times = hits, hits_qs, times
        yield url


@contextlib.contextmanager
def serve_directory(root: Path, robots_txt: str = ALLOW_ALL) -> Iterator[ServerURL]:
    """Serve ``root`` statically on 127.0.0.1; yields the base URL (no trailing slash).

    ``/robots.txt`` answers ``robots_txt`` (text/plain) whatever ``root`` holds. Other paths map
    to files under ``root`` (content type from the extension via ``mimetypes``); missing -> 404.
    Raises ``FileNotFoundError`` if ``root`` is not a directory.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    app = web.Application()

    async def robots(_request: web.Request) -> web.Response:
        return web.Response(text=robots_txt, content_type="text/plain")

    app.router.add_get("/robots.txt", robots)
    app.router.add_static("/", root, show_index=False, follow_symlinks=False)
    with _running(app) as url:
        yield url


# ----------------------------------------------------------------------------- bad web content


def _page(title: str, body: str, lang: str = "hu", head: str = '<meta charset="utf-8">') -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>{head}\n<title>{title}</title></head>\n'
        f"<body>\n<h1>{title}</h1>\n{body}</body>\n</html>\n"
    )


def _img(src: str, alt: str) -> str:
    esc = alt.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return f'<p><img src="{src}" alt="{esc}"></p>\n'


def _pairs(source_web: Path) -> dict[str, str]:
    """image path -> alt text, from ``source_web/PAIRS_expected.tsv``."""
    with open(source_web / "PAIRS_expected.tsv", encoding="utf-8", newline="") as f:
        return {row["img"]: row["alt"] for row in csv.DictReader(f, delimiter="\t")}


@functools.cache
def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of ``side`` x ``side`` black pixels (~110 KB for 30000).

    Written with zlib row by row (PNG spec, ISO/IEC 15948) because Pillow keeps mode "1" at one
    byte per pixel in memory: 900 MB for 30000^2. Pillow's ``Image.open`` raises
    ``DecompressionBombError`` on it (over 2 x ``Image.MAX_IMAGE_PIXELS``).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # Rows are filter byte 0 + packed 1-bit pixels, all 0. Speed-up (1.7 s -> 0.1 s): after a
    # Z_FULL_FLUSH deflate forgets its history, so a block of 1000 identical rows compresses to
    # the same bytes every time and is compressed once, then repeated (RFC 1950/1951).
    block = bytes(1 + (side + 7) // 8) * 1000
    reps, rest = divmod(side, 1000)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; zlib header and Adler-32 added below
    seg = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    tail = z.compress(block[: len(block) // 1000 * rest]) + z.flush()
    adler = 1
    for _ in range(reps):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(block[: len(block) // 1000 * rest], adler)
    idat = b"\x78\xda" + seg * reps + tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _broken_html(img_src: str, alt: str) -> str:
    # Unclosed <p>/<b>/<i>/<li>/<td>, stray </div> and </span>, unquoted and duplicate attributes,
    # no </head>, no </body></html>: html5 parsers (and lenient ones) recover the <img> and its alt.
    return (
        "<html lang=hu><head><meta charset=utf-8><title>Hibás oldal</title>\n"
        "<body><div class=tartalom><p>Első bekezdés <b>félkövér szöveggel <i>és dőlt betűkkel\n"
        "</div></div></span>\n<ul><li>első elem<li>második elem\n"
        "<table><tr><td>cella<td>másik cella</tr>\n"
        f'<p>Második bekezdés, a kép előtt.\n<img src={img_src} class=kep class=masik alt="{alt}" '
        "width=607 height=472>\n"
        "<p>Harmadik bekezdés a szerkesztőről, lezáratlan <a href=/p/ok.html>hivatkozással\n" + _HU_PROSE
    )


def _bad_web_app(
    source_web: Path,
    slow_s: float,
    flaky_failures: int,
    redirect_chain: int,
    big_html_bytes: int,
    huge_image_bytes: int,
    bomb_side: int,
) -> web.Application:
    alts = _pairs(source_web)
    missing = [p for p in (*_HU_IMAGES.values(), *_RU_IMAGES.values()) if p not in alts]
    if missing:
        raise FileNotFoundError(f"{source_web}/PAIRS_expected.tsv lacks {missing}")
    real = {k: (source_web / p).read_bytes() for k, p in {**_HU_IMAGES, **_RU_IMAGES}.items()}
    alt = {k: alts[p] for k, p in {**_HU_IMAGES, **_RU_IMAGES}.items()}
    alt.update(_HU_ALTS)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(real.pop("huge"))).convert("RGB").save(jpeg, "JPEG", quality=90)
    huge_head = jpeg.getvalue()
    truncated = real.pop("truncated")
    truncated = truncated[: len(truncated) // 2]
    bomb = bomb_png(bomb_side)
    failures: collections.Counter = collections.Counter()

    def html(text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")

    def png(data: bytes) -> web.Response:
        return web.Response(body=data, content_type="image/png")

    def hu_page(title: str, img_key: str | None) -> str:
        return _page(title, _HU_PROSE + (_img(f"/img/{img_key}.png", alt[img_key]) if img_key else ""))

    pages: dict[str, str] = {
        "/p/ok.html": hu_page("Helyesírás-ellenőrzés", "ok"),
        "/private/secret.html": hu_page("Belső oldal", "secret"),
        "/p/broken.html": _broken_html("/img/broken.png", alt["broken"]),
        f"/p/redirect/{redirect_chain}.html": hu_page("Az átirányítási lánc vége", "chainend"),
        "/p/images.html": _page(
            "Minden képhiba egy oldalon", _HU_PROSE + "".join(_img(p, alt[c]) for c, p in IMG_CASES.items())
        ),
    }
    for case, path in IMG_CASES.items():
        pages[f"/p/img-{case}.html"] = _page(f"Képhiba: {case}", _HU_PROSE + _img(path, alt[case]))
    linked = [
        "/p/ok.html",
        "/p/404.html",
        "/p/500.html",
        "/p/flaky.html",
        "/p/ratelimited.html",
        "/p/slow.html",
        "/p/loop1.html",
        "/p/redirect/0.html",
        "/private/secret.html",
        "/p/big.html",
        "/p/big-chunked.html",
        "/p/document.pdf",
        "/p/broken.html",
        "/p/garbage.html",
        "/p/cp1251.html",
        "/p/cp1251-meta.html",
        "/p/cp1251-nodecl.html",
        "/p/images.html",
        *(f"/p/img-{c}.html" for c in IMG_CASES),
    ]
    index = _page(
        "Hibás bemenetek tesztoldala",
        _HU_PROSE + "<ul>\n" + "".join(f'<li><a href="{p}">{p}</a></li>\n' for p in linked) + "</ul>\n",
    )

    async def static_page(request: web.Request) -> web.Response:
        return html(pages[request.path])

    async def index_page(_request: web.Request) -> web.Response:
        return html(index)

    async def robots(_request: web.Request) -> web.Response:
        return web.Response(text=BAD_WEB_ROBOTS, content_type="text/plain")

    async def not_found(_request: web.Request) -> web.Response:
        return html(_page("404 – Nem található", "<p>A keresett oldal nem található.</p>\n"), 404)

    async def always_500(_request: web.Request) -> web.Response:
        return html(_page("500 – Belső hiba", "<p>Belső szerverhiba.</p>\n"), 500)

    def first_fail(status: int, ok, headers: dict | None = None):
        async def handler(request: web.Request) -> web.StreamResponse:
            if failures[request.path] < flaky_failures:
                failures[request.path] += 1
                return web.Response(status=status, text=f"{status}\n", headers=headers)
            return ok()

        return handler

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(slow_s)
        if request.path.startswith("/img/"):
            return png(real["slow"])
        return html(hu_page("Lassú oldal", "slowpage"))

    def redirect_to(target: str):
        async def handler(_request: web.Request) -> web.Response:
            raise web.HTTPFound(target)

        return handler

    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n >= redirect_chain:
            return html(pages[f"/p/redirect/{redirect_chain}.html"])
        raise web.HTTPFound(f"/p/redirect/{n + 1}.html")

    def streamed(content_type: str, head: bytes, total: int, chunked: bool, filler: bytes):

        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": content_type})
            if chunked:
                resp.enable_chunked_encoding()
            else:
                resp.content_length = total
            await resp.prepare(request)
            try:
                await resp.write(head)
                left = total - len(head)
                while left > 0:  # constant memory: one block written repeatedly
                    await resp.write(filler[: min(left, len(filler))])
                    left -= len(filler)
                await resp.write_eof()
            except ConnectionError:  # the client hit its cap and hung up: expected
                pass
            return resp

        return handler

    big_head = _page("Nagyon nagy oldal", _HU_PROSE * 20).encode()[: -len("</body>\n</html>\n")]
    html_filler = _HU_PROSE.encode() * (2**18 // len(_HU_PROSE.encode()))  # ~256 KiB of prose
    jpeg_filler = bytes(2**18)  # zeros after the JPEG's EOI marker
    rnd = random.Random(1251)
    garbage = rnd.randbytes(4096)

    def cp1251(variant: str) -> web.Response:
        head = '<meta charset="windows-1251">' if variant == "cp1251-meta" else ""
        text = _page("Проверка орфографии", _RU_PROSE + _img(f"/img/{variant}.png", alt[variant]), lang="ru", head=head)
        ctype = "text/html; charset=windows-1251" if variant == "cp1251" else "text/html"
        return web.Response(body=text.encode("cp1251"), headers={"Content-Type": ctype})

    app = web.Application()
    add = app.router.add_get
    add("/", index_page)
    add("/index.html", index_page)
    add("/robots.txt", robots)
    for path in pages:
        add(path, static_page)
    add("/p/404.html", not_found)
    add("/p/500.html", always_500)
    add("/p/flaky.html", first_fail(500, lambda: html(hu_page("Ingadozó oldal", "flakypage"))))
    add(
        "/p/ratelimited.html",
        first_fail(429, lambda: html(hu_page("Korlátozott oldal", "ratelimited")), {"Retry-After": "1"}),
    )
    add("/p/slow.html", slow)
    add("/p/loop1.html", redirect_to("/p/loop2.html"))
    add("/p/loop2.html", redirect_to("/p/loop1.html"))
    add("/p/redirect/{n:\\d+}.html", chain)
    add("/p/big.html", streamed("text/html; charset=utf-8", big_head, big_html_bytes, False, html_filler))
    add("/p/big-chunked.html", streamed("text/html; charset=utf-8", big_head, big_html_bytes, True, html_filler))
    add(
        "/p/document.pdf",
        const(
            lambda: web.Response(
                body=b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", content_type="application/pdf"
            )
        ),
    )
    add("/p/garbage.html", const(lambda: web.Response(body=garbage, headers={"Content-Type": "text/html"})))
    for variant in _RU_IMAGES:
        add(f"/p/{variant}.html", const(lambda v=variant: cp1251(v)))
    for key in ("ok", "flakypage", "ratelimited", "slowpage", "broken", "secret", "chainend", *_RU_IMAGES):
        add(f"/img/{key}.png", const(lambda k=key: png(real[k])))
    add("/img/notimage.png", const(lambda: html(_page("Ez nem kép", "<p>Ez egy weboldal, nem kép.</p>\n"))))
    add("/img/truncated.png", const(lambda: png(truncated)))
    add("/img/bomb.png", const(lambda: png(bomb)))
    add("/img/huge.jpg", streamed("image/jpeg", huge_head, huge_image_bytes, False, jpeg_filler))
    add("/img/huge-chunked.jpg", streamed("image/jpeg", huge_head, huge_image_bytes, True, jpeg_filler))
    add("/img/vector.svg", const(lambda: web.Response(body=_SVG, content_type="image/svg+xml")))
    add("/img/404.png", not_found)
    add("/img/flaky.png", first_fail(503, lambda: png(real["flaky"])))
    add("/img/slow.png", slow)
    return app


def const(make):
    """An aiohttp handler answering ``make()`` (a fresh Response per request: they are single-use)."""

    async def handler(_request: web.Request) -> web.StreamResponse:
        return make()

    return handler


@contextlib.contextmanager
def serve_bad_web(
    *,
    source_web: Path = DEMO_WEB,
    slow_s: float = 5.0,
    flaky_failures: int = 1,
    redirect_chain: int = 20,
    big_html_bytes: int = 7 * 2**20,
    huge_image_bytes: int = 21 * 2**20,
    bomb_side: int = 30000,
) -> Iterator[ServerURL]:
    """Serve the bad-input site described in the module docstring on 127.0.0.1.

    Args:
        source_web: folder with ``PAIRS_expected.tsv`` and the images it names (demo_web or miniweb).
        slow_s: seconds ``/p/slow.html`` and ``/img/slow.png`` wait before answering (use a client
            read timeout below it to get ``timeout``).
        flaky_failures: how many requests to each flaky path fail (500/429/503) before it succeeds;
            counted per path and per server.
        redirect_chain: hops of ``/p/redirect/0.html`` before the final page (no loop).
        big_html_bytes: body size of ``/p/big*.html`` in bytes (default 7 MiB, over a 6 MiB cap).
        huge_image_bytes: body size of ``/img/huge*.jpg`` in bytes (default 21 MiB, over 20 MiB).
        bomb_side: width = height of ``/img/bomb.png`` in pixels.

    Yields the base URL (``ServerURL``, with ``.hits``). Raises ``FileNotFoundError`` when
    ``source_web`` lacks the images the site uses.
    """
    app = _bad_web_app(
        Path(source_web), slow_s, flaky_failures, redirect_chain, big_html_bytes, huge_image_bytes, bomb_side
    )
    with _running(app) as url:
        yield url


# ------------------------------------------------------------------------ crawler web (issue 17)
CRAWLER_WEB_ROBOTS = (
    "User-agent: *\n"
    "Disallow: /*.png$\n"
    "Disallow: /*?sid=\n"
    "Allow: /img/*.png$\n"
    "Disallow: /private/\n"
    "Allow: /private/public.html\n"
)
CRAWLER_WEB_TDMREP = (
    '[{"location": "/p/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/policy.json"},'
    ' {"location": "/img/reserved/*", "tdm-reservation": 1},'
    ' {"location": "/*", "tdm-reservation": 0}]'
)
#: images on /p/slow.html besides the dripping one
SLOW_PAGE_IMAGES = 8
GALLERY_ALTS = 6


def synthetic_png(seed: int, side: int = 320) -> bytes:
    """A ``side`` x ``side`` PNG of random 8 x 8 colour blocks (distinct pHash per seed: no near-duplicates)."""
    rnd = random.Random(seed)
    small = Image.new("RGB", (8, 8))
    small.putdata([tuple(rnd.randrange(256) for _ in range(3)) for _ in range(64)])
    buf = io.BytesIO()
    small.resize((side, side), Image.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def _crawler_web_app(source_web: Path, drip_s: float, robots_pad_bytes: int) -> web.Application:
    import base64

    pairs = _pairs(source_web)
    hu_alts = sorted({a for p, a in pairs.items() if p.startswith("hu/") and len(a) > 15})
    data_png = (source_web / _HU_IMAGES["broken"]).read_bytes()  # the 607 x 472 PNG of the issue
    data_alt = pairs[_HU_IMAGES["broken"]]
    seeds = iter(range(1000))
    img: dict[str, bytes] = {}

    def pic(name: str) -> str:
        img[name] = synthetic_png(next(seeds))
        return f"/img/{name}.png"

    alts = iter(hu_alts * 10)

    def tag(src: str, alt: str | None = None, attr: str = "src") -> str:
        return f'<img {attr}="{src}" alt="{alt or next(alts)}">\n'

    b64 = base64.b64encode(data_png).decode()
    pages: dict[str, tuple[str, dict]] = {}  # path -> (html, extra headers)

    def page(path: str, title: str, body: str, head: str = '<meta charset="utf-8">', headers=None) -> None:
        pages[path] = (_page(title, _HU_PROSE + body, head=head), headers or {})

    page(
        "/p/robots.html",
        "Robots-szabályok",
        tag("/photo.png") + tag("/photo2.jpg.png") + tag(pic("robots-ok")) + tag("/img/404.png"),
    )
    page(
        "/p/srcset.html",
        "Képkészletek",
        tag(f"{pic('srcset-lo')} 1x, data:image/png;base64,{b64} 2x", data_alt, "srcset")
        + tag("/cdn/w_800,h_600/photo.jpg 800w, /cdn/w_400,h_300/photo.jpg 400w", None, "srcset"),
    )
    img["cdn"] = synthetic_png(next(seeds))
    pic("picture")
    page(
        "/p/picture.html",
        "Képelem",
        '<picture><source type="image/avif" srcset="/img/x.avif">'
        '<source media="(max-width: 600px)" srcset="/img/mobile.jpg">'
        '<source srcset="/img/picture.png 1000w, /img/small.png 300w">' + tag("/img/fallback.png") + "</picture>\n",
    )
    page(
        "/p/data.html",
        "Beágyazott kép",
        tag("data:image/png;base64," + base64.b64encode(synthetic_png(900)).decode())
        + tag("data:image/png;base64,@@@"),
    )
    page("/p/optout-xrobots.html", "Tiltás fejlécben", tag(pic("optout-page-1")), headers={"X-Robots-Tag": "noai"})
    page(
        "/p/optout-meta.html",
        "Tiltás meta elemben",
        tag(pic("optout-page-2")),
        head='<meta charset="utf-8"><meta name="robots" content="index, noimageai">',
    )
    page("/p/optout-tdm.html", "TDM-fenntartás", tag(pic("optout-page-3")), headers={"tdm-reservation": "1"})
    page("/p/reserved/page.html", "TDM-fenntartott útvonal", tag(pic("optout-page-4")))
    page(
        "/p/optout-images.html",
        "Tiltott képek",
        tag(pic("optout-xrobots")) + tag(pic("optout-tdm")) + tag("/img/reserved/r.jpg") + tag(pic("otherbot")),
    )
    gallery = pic("gallery")
    page("/p/gallery.html", "Galéria", "".join(tag(gallery) for _ in range(GALLERY_ALTS)))
    page(
        "/p/longalt.html",
        "Hosszú leírás",
        tag(pic("longalt"), (_HU_PROSE.replace("<p>", "").replace("</p>", "") * 80)[:5000]),
    )
    page(
        "/p/slow.html", "Lassú kép", tag("/img/drip.png") + "".join(tag(pic(f"s{i}")) for i in range(SLOW_PAGE_IMAGES))
    )
    page("/p/slow2.html", "Másik lassú kép", tag("/img/drip2.png") + tag(pic("s2-0")) + tag(pic("s2-1")))
    page("/p/norm.html", "Normalizálás", tag(pic("norm")))
    page("/private/public.html", "Nyilvános", tag(pic("public")))
    page("/private/secret.html", "Titkos", tag(pic("secret")))
    for n in range(1, 7):
        page(f"/p/deep/{n}.html", f"Mélység {n}", f'<p><a href="/p/deep/{n + 1}.html">tovább</a></p>\n')
    links = [p for p in pages if not p.startswith("/p/deep/")] + [
        "/p/deep/1.html",
        "/index.html?sid=12345",
        "/p/404.html",
        "/p/500.html",
        "/p/drip.html",
        "/p/./norm.html",
        "/p/%6Eorm.html#top",
        "/p/../p/norm.html",
        " /p/no\trm.html ",
        "/P/../p/norm.html",
    ]
    index = _page(
        "A bejáró tesztoldala",
        _HU_PROSE + "<ul>\n" + "".join(f'<li><a href="{p}">link</a></li>\n' for p in links) + "</ul>\n",
    )

    def html(text: str, status: int = 200, headers=None) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=headers)

    async def page_handler(request: web.Request) -> web.Response:
        text, headers = pages[request.path]
        return html(text, headers=headers)

    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in img:
            return html("<p>nincs</p>", 404)
        headers = {
            "optout-xrobots": {"X-Robots-Tag": "noimageai"},
            "optout-tdm": {"tdm-reservation": "1"},
            "otherbot": {"X-Robots-Tag": "otherbot: noai"},
        }.get(name, {})
        return web.Response(body=img[name], content_type="image/png", headers=headers)

    async def cdn(request: web.Request) -> web.Response:
        if request.match_info["spec"] != "w_800,h_600":
            return html("<p>nincs</p>", 404)
        return web.Response(body=img["cdn"], content_type="image/jpeg")

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(data_png)
        await resp.prepare(request)
        try:
            for i in range(int(drip_s / 0.2)):
                await resp.write(data_png[i : i + 1])
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    add = app.router.add_get
    add("/", const(lambda: html(index)))
    add("/index.html", const(lambda: html(index)))
    pad = ("# " + "x" * 97 + "\n") * (robots_pad_bytes // 100)
    robots = (CRAWLER_WEB_ROBOTS + pad + ("Disallow: /p/norm.html\n" if pad else "")).encode()
    add("/robots.txt", const(lambda: web.Response(body=robots, content_type="text/plain")))
    add(
        "/.well-known/tdmrep.json",
        const(lambda: web.Response(text=CRAWLER_WEB_TDMREP, content_type="application/json")),
    )
    for path in pages:
        add(path, page_handler)
    add("/p/500.html", const(lambda: html("<p>hiba</p>", 500)))
    add("/img/drip.png", drip)
    add("/img/drip2.png", drip)

    async def drip_page(request: web.Request) -> web.StreamResponse:  # a page that never finishes arriving
        resp = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
        await resp.prepare(request)
        try:
            for _ in range(int(drip_s / 0.2)):
                await resp.write(b"<p>lassan</p>\n")
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    add("/p/drip.html", drip_page)
    add("/img/{name}.png", image)
    add("/cdn/{spec}/photo.jpg", cdn)
    return app


@contextlib.contextmanager
def serve_crawler_web(
    *, source_web: Path = DEMO_WEB, drip_s: float = 60.0, robots_pad_bytes: int = 0
) -> Iterator[ServerURL]:
    """The crawler-on-the-real-web site (issue 17) on 127.0.0.1: RFC 9309 wildcards, srcset, ``<picture>``,
    ``data:`` images, AI opt-outs, a dripping image, a caption-heavy gallery, a long alt, URL spellings.

    ``robots.txt`` is :data:`CRAWLER_WEB_ROBOTS`, ``/.well-known/tdmrep.json`` :data:`CRAWLER_WEB_TDMREP`.
    ``robots_pad_bytes`` > 0 pads robots.txt with that many bytes of comment lines and then adds
    ``Disallow: /p/norm.html`` beyond them (a crawler parsing the first 500 KiB of a 10 MB file never sees it).
    Expected outcome, path by path (all pages ``<html lang="hu">``, images 320 x 320 synthetic PNGs
    unless said; alts are genuine Hungarian alt-texts of ``source_web``):

    ==============================  ==============================================  ================================
    path                            what it holds                                   expected
    ==============================  ==============================================  ================================
    ``/p/robots.html``              ``/photo.png``, ``/photo2.jpg.png`` (disallowed  0 requests to them,
                                    by ``/*.png$``), ``/img/robots-ok.png``          ``robots_disallowed``; kept;
                                    (``Allow: /img/*.png$``), ``/img/404.png``       ``http_404``
    ``/index.html?sid=12345``       linked from the index (``Disallow: /*?sid=``)     0 requests
    ``/private/public.html``        ``Allow`` override inside ``/private/``          fetched, its image kept
    ``/private/secret.html``        disallowed                                       0 requests
    ``/p/srcset.html``              ``lo.png 1x, data:… 2x`` (a real 607 x 472 PNG)  data: row kept (``data:`` digest);
                                    and ``/cdn/w_800,h_600/photo.jpg 800w, …400w``   the w_800,h_600 URL kept
    ``/p/picture.html``             avif ``<source>``, a ``media`` one, a plain one  ``/img/picture.png`` kept,
                                    with srcset, fallback ``<img>``                  2 sources skipped (counted)
    ``/p/data.html``                a data: PNG; a malformed data: URI               kept; ``data_uri_invalid``
    ``/p/optout-*.html``,           X-Robots-Tag ``noai``; meta robots               ``ai_opt_out`` (extract, or
    ``/p/reserved/page.html``       ``noimageai``; ``tdm-reservation: 1``; tdmrep    crawl for tdmrep), no image request
    ``/p/optout-images.html``       images with X-Robots-Tag ``noimageai``,          ``ai_opt_out`` x 3 (the reserved
                                    ``tdm-reservation: 1``, tdmrep-reserved path;    one never requested); kept
                                    one with ``otherbot: noai``
    ``/p/gallery.html``             one picture, ``GALLERY_ALTS`` different alts     3 kept, rest ``too_many_captions``
    ``/p/longalt.html``             a 5,000-character alt                            ``alt_too_long``
    ``/p/slow.html``                ``/img/drip.png`` (1 byte / 0.2 s for            ``timeout``; the others kept
                                    ``drip_s``), then ``SLOW_PAGE_IMAGES`` images
    ``/p/slow2.html``               ``/img/drip2.png`` (the same drip), 2 images     ``timeout``, fetched while drip.png
                                                                                     is (another WARC slice)
    ``/p/norm.html``                linked 6 ways (``./``, ``%6E``, ``#top``, tab…)  1 request
    ``/p/deep/1..6.html``           a link chain                                     cut by ``max_depth``
    ``/p/404.html``, ``/p/500.html``                                                 ``http_404``; ``http_500``
    ``/p/drip.html``                a page sent a line every 0.2 s for ``drip_s``    ``timeout`` within the deadline
    ==============================  ==============================================  ================================
    """
    with _running(_crawler_web_app(Path(source_web), drip_s, robots_pad_bytes)) as url:
        yield url
