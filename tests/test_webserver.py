"""The test web servers of tests/webserver.py serve each case exactly as their docstring says."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
import socket
import threading
import time
import urllib.robotparser
import xml.etree.ElementTree as ET

import aiohttp
import charset_normalizer
import pytest
import webserver
from PIL import Image
from selectolax.lexbor import LexborHTMLParser
from webserver import DEMO_WEB, IMG_CASES, serve_bad_web, serve_directory

SLOW_S = 1.0
BIG, HUGE = 7 * 2**20, 21 * 2**20


def get(url: str, path: str, **kw) -> tuple[int, dict, bytes]:
    """GET url+path with aiohttp; returns (status, headers, body). kw go to session.get."""
    timeout = kw.pop("timeout", aiohttp.ClientTimeout(total=30))

    async def go():
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.get(url + path, **kw) as r:
                return r.status, dict(r.headers), await r.read()

    return asyncio.run(go())


def pairs(lang: str) -> dict[str, str]:
    with open(DEMO_WEB / "PAIRS_expected.tsv", encoding="utf-8", newline="") as f:
        return {r["img"]: r["alt"] for r in csv.DictReader(f, delimiter="\t") if r["lang"] == lang}


def imgs(html: bytes | str) -> list[tuple[str, str]]:
    tree = LexborHTMLParser(html)
    return [(n.attributes.get("src"), n.attributes.get("alt")) for n in tree.css("img")]


@pytest.fixture(scope="module")
def bad():
    with serve_bad_web(slow_s=SLOW_S, big_html_bytes=BIG, huge_image_bytes=HUGE) as url:
        yield url


# ----------------------------------------------------------------------------- serve_directory


def test_serve_directory_content_types_and_robots(tmp_path):
    page = "hu/omegat-manual/spellchecker.html"
    with serve_directory(DEMO_WEB) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        st, h, body = get(url, "/" + page)
        assert st == 200 and h["Content-Type"].startswith("text/html")
        assert body == (DEMO_WEB / page).read_bytes()
        st, h, body = get(url, "/hu/omegat-manual/images/SpellcheckingText.png")
        assert st == 200 and h["Content-Type"] == "image/png" and Image.open(io.BytesIO(body)).size == (1097, 795)
        svg = next(DEMO_WEB.glob("vi/libreoffice-help/**/*.svg")).relative_to(DEMO_WEB).as_posix()
        assert get(url, "/" + svg)[1]["Content-Type"] == "image/svg+xml"
        st, h, body = get(url, "/robots.txt")
        assert st == 200 and body.decode() == webserver.ALLOW_ALL
        assert get(url, "/no/such/page.html")[0] == 404
        assert url.hits["/" + page] == 1
    with serve_directory(DEMO_WEB, robots_txt="User-agent: *\nDisallow: /hu/\n") as url:
        rp = urllib.robotparser.RobotFileParser()
        rp.parse(get(url, "/robots.txt")[2].decode().splitlines())
        assert not rp.can_fetch("mella", url + "/" + page) and rp.can_fetch("mella", url + "/ar/x.html")
    with pytest.raises(FileNotFoundError):
        with serve_directory(tmp_path / "missing"):
            pass


def test_clean_shutdown_even_with_request_in_flight():
    threads_before = set(threading.enumerate())
    with serve_bad_web(slow_s=30) as url:
        port = int(url.rsplit(":", 1)[1])

        async def hang():
            async with aiohttp.ClientSession() as s:
                try:
                    async with s.get(url + "/p/slow.html") as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass

        t = threading.Thread(target=lambda: asyncio.run(hang()))
        t.start()
        time.sleep(0.3)
        start = time.monotonic()
    assert time.monotonic() - start < 5, "shutdown waited for the 30 s handler"
    t.join(10)
    assert not t.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not [x for x in set(threading.enumerate()) - threads_before if x.name == "test-webserver"]


# ----------------------------------------------------------------------------- bad web: pages


def test_docstring_paths_all_answer(bad):
    doc_paths = {p for p in re.findall(r"``(/[a-z0-9/._-]+)``", webserver.__doc__) if not p.endswith("/")}
    assert len(doc_paths) >= 30
    for p in sorted(doc_paths):
        if any(k in p for k in ("slow", "big", "huge")):
            continue  # tested below with timeouts / streaming
        st, h, body = get(bad, p, allow_redirects=False)
        assert st in (200, 302, 404, 429, 500, 503), (p, st)
        assert h["Content-Type"] != "text/plain; charset=utf-8" or st != 404, p  # routed, not aiohttp's 404
    st, h, _ = get(bad, "/p/undocumented.html")
    assert st == 404 and h["Content-Type"] == "text/plain; charset=utf-8"


def test_index_links_every_page_and_robots(bad):
    st, h, body = get(bad, "/index.html")
    assert st == 200 and get(bad, "/")[2] == body
    links = {a.attributes["href"] for a in LexborHTMLParser(body).css("a")}
    for p in [
        "/p/ok.html",
        "/p/404.html",
        "/p/500.html",
        "/p/flaky.html",
        "/p/slow.html",
        "/p/loop1.html",
        "/p/redirect/0.html",
        "/private/secret.html",
        "/p/big.html",
        "/p/big-chunked.html",
        "/p/broken.html",
        "/p/garbage.html",
        "/p/cp1251.html",
        "/p/cp1251-meta.html",
        "/p/cp1251-nodecl.html",
        "/p/document.pdf",
        "/p/images.html",
    ]:
        assert p in links
    assert {f"/p/img-{c}.html" for c in IMG_CASES} <= links
    rp = urllib.robotparser.RobotFileParser()
    rp.parse(get(bad, "/robots.txt")[2].decode().splitlines())
    assert not rp.can_fetch("mella", bad + "/private/secret.html")
    assert rp.can_fetch("mella", bad + "/p/ok.html") and rp.can_fetch("mella", bad + "/img/ok.png")
    assert get(bad, "/private/secret.html")[0] == 200  # served: only robots.txt forbids it


def test_ok_page_is_hungarian_with_real_large_image(bad):
    st, h, body = get(bad, "/p/ok.html")
    assert st == 200 and h["Content-Type"] == "text/html; charset=utf-8"
    tree = LexborHTMLParser(body)
    assert tree.css_first("html").attributes["lang"] == "hu"
    assert "helyesírás" in tree.body.text()
    [(src, alt)] = imgs(body)
    assert src == "/img/ok.png" and alt == pairs("hu")["hu/omegat-manual/images/SpellcheckingText.png"]
    st, h, img = get(bad, src)
    assert h["Content-Type"] == "image/png"
    w, hgt = Image.open(io.BytesIO(img)).size
    assert w > 256 and hgt > 256


def test_http_errors(bad):
    assert get(bad, "/p/404.html")[0] == 404
    assert get(bad, "/img/404.png")[0] == 404
    assert [get(bad, "/p/500.html")[0] for _ in range(3)] == [500, 500, 500]
    st, h, _ = get(bad, "/p/document.pdf")
    assert st == 200 and h["Content-Type"] == "application/pdf"


def test_flaky_paths_fail_then_succeed():
    with serve_bad_web(flaky_failures=2) as url:
        assert [get(url, "/p/flaky.html")[0] for _ in range(3)] == [500, 500, 200]
        assert imgs(get(url, "/p/flaky.html")[2]) == [
            ("/img/flakypage.png", pairs("hu")["hu/omegat-manual/images/SpellcheckerSetup2.png"])
        ]
        r = [get(url, "/p/ratelimited.html") for _ in range(3)]
        assert [x[0] for x in r] == [429, 429, 200] and r[0][1]["Retry-After"] == "1"
        r = [get(url, "/img/flaky.png") for _ in range(3)]
        assert [x[0] for x in r] == [503, 503, 200]
        assert Image.open(io.BytesIO(r[2][2])).format == "PNG"
        assert url.hits["/p/flaky.html"] == 4 and url.hits["/img/flaky.png"] == 3


def test_slow_paths_time_out(bad):
    short = aiohttp.ClientTimeout(sock_read=SLOW_S / 3)
    for p in ["/p/slow.html", "/img/slow.png"]:
        with pytest.raises(asyncio.TimeoutError):
            get(bad, p, timeout=short)
    t = time.monotonic()
    st, _, body = get(bad, "/img/slow.png")
    assert st == 200 and time.monotonic() - t >= SLOW_S and Image.open(io.BytesIO(body)).format == "PNG"


def test_redirect_loop_and_long_chain(bad):
    st, h, _ = get(bad, "/p/loop1.html", allow_redirects=False)
    assert st == 302 and h["Location"] == "/p/loop2.html"
    st, h, _ = get(bad, "/p/loop2.html", allow_redirects=False)
    assert st == 302 and h["Location"] == "/p/loop1.html"
    with pytest.raises(aiohttp.TooManyRedirects):
        get(bad, "/p/loop1.html", max_redirects=10)
    with pytest.raises(aiohttp.TooManyRedirects):
        get(bad, "/p/redirect/0.html", max_redirects=10)
    st, _, body = get(bad, "/p/redirect/0.html", max_redirects=25)
    assert st == 200 and imgs(body)[0][0] == "/img/chainend.png"
    locations = [get(bad, f"/p/redirect/{i}.html", allow_redirects=False)[1]["Location"] for i in range(20)]
    assert len(set(locations)) == 20  # a chain, no loop


@pytest.mark.parametrize(
    "path,chunked",
    [("/p/big.html", False), ("/p/big-chunked.html", True), ("/img/huge.jpg", False), ("/img/huge-chunked.jpg", True)],
)
def test_oversized_responses(bad, path, chunked):
    size = BIG if path.startswith("/p/") else HUGE

    async def go():
        async with aiohttp.ClientSession() as s, s.get(bad + path) as r:
            assert (r.headers.get("Transfer-Encoding") == "chunked") is chunked
            assert r.content_length == (None if chunked else size)
            head, n, nul = b"", 0, False
            async for c in r.content.iter_chunked(2**16):
                head, n, nul = head or c, n + len(c), nul or b"\x00" in c
            return r.headers["Content-Type"], head, n, nul

    ctype, head, n, nul = asyncio.run(go())
    assert n == size and nul is path.endswith(".jpg")  # html is prose throughout; jpeg is zero-padded
    if path.startswith("/p/"):
        assert ctype == "text/html; charset=utf-8" and head.startswith(b"<!DOCTYPE html>")
    else:
        assert ctype == "image/jpeg" and head[:3] == b"\xff\xd8\xff"


def test_client_hanging_up_mid_stream_leaves_server_serving(bad):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.get(bad + "/img/huge.jpg") as r:
                await r.content.read(2**20)  # then close: a crawler hitting its size cap

    asyncio.run(go())
    assert get(bad, "/p/ok.html")[0] == 200


def test_broken_html_is_broken_but_recoverable(bad):
    st, h, body = get(bad, "/p/broken.html")
    text = body.decode()
    assert st == 200 and "</div></div></span>" in text and "</body>" not in text and "</head>" not in text
    [(src, alt)] = imgs(body)
    assert src == "/img/broken.png" and alt == pairs("hu")["hu/bibletime-handbook/ss_configfonts.png"]
    assert Image.open(io.BytesIO(get(bad, src)[2])).size == (607, 472)


def test_garbage_is_binary_labelled_html(bad):
    st, h, body = get(bad, "/p/garbage.html")
    assert st == 200 and h["Content-Type"] == "text/html" and len(body) == 4096 and b"\x00" in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    assert body == get(bad, "/p/garbage.html")[2]  # stable


@pytest.mark.parametrize("variant", ["cp1251", "cp1251-meta", "cp1251-nodecl"])
def test_windows_1251_pages(bad, variant):
    st, h, body = get(bad, f"/p/{variant}.html")
    in_header = "windows-1251" in h["Content-Type"]
    in_meta = b'charset="windows-1251"' in body
    assert (in_header, in_meta) == {
        "cp1251": (True, False),
        "cp1251-meta": (False, True),
        "cp1251-nodecl": (False, False),
    }[variant]
    assert b"charset" not in body.lower() or variant == "cp1251-meta"
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    [(src, alt)] = imgs(body.decode("cp1251"))
    assert src == f"/img/{variant}.png" and alt == pairs("ru")[webserver._RU_IMAGES[variant]]
    assert 'lang="ru"' in body.decode("cp1251")
    # The undeclared page is detectable (fair test input): charset-normalizer finds cp1251.
    assert charset_normalizer.from_bytes(body).best().encoding == "cp1251"
    w, hgt = Image.open(io.BytesIO(get(bad, src)[2])).size
    assert w > 256 and hgt > 256


# ----------------------------------------------------------------------------- bad web: images


def test_image_case_pages_reference_their_image_with_hungarian_alt(bad):
    all_imgs = imgs(get(bad, "/p/images.html")[2])
    assert [s for s, _ in all_imgs] == list(IMG_CASES.values())
    for case, path in IMG_CASES.items():
        body = get(bad, f"/p/img-{case}.html")[2]
        assert LexborHTMLParser(body).css_first("html").attributes["lang"] == "hu"
        [(src, alt)] = imgs(body)
        assert src == path and len(alt.split()) >= 2 and re.search("[áéíóöőúüű]", alt), (case, alt)
    assert set(webserver.EXPECTED_IMAGE_REASON) == set(IMG_CASES.values())


def test_bad_images(bad):
    st, h, body = get(bad, "/img/notimage.png")
    assert st == 200 and h["Content-Type"].startswith("text/html") and body.lstrip().startswith(b"<!DOCTYPE html>")

    st, h, body = get(bad, "/img/truncated.png")
    assert h["Content-Type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(body))
    with pytest.raises(OSError, match="truncated"):
        im.load()

    st, h, body = get(bad, "/img/bomb.png")
    assert h["Content-Type"] == "image/png" and len(body) < 2**20
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))

    st, h, body = get(bad, "/img/vector.svg")
    assert h["Content-Type"] == "image/svg+xml"
    root = ET.fromstring(body)
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.attrib["width"] == "512"
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(body))


def test_real_images_are_all_distinct(bad):
    keys = [
        "ok",
        "flakypage",
        "ratelimited",
        "slowpage",
        "broken",
        "secret",
        "chainend",
        "cp1251",
        "cp1251-meta",
        "cp1251-nodecl",
    ]
    digests = {}
    for k in keys:
        st, h, body = get(bad, f"/img/{k}.png")
        assert st == 200 and h["Content-Type"] == "image/png"
        im = Image.open(io.BytesIO(body))
        assert min(im.size) > 256, k
        digests[k] = hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()
    assert len(set(digests.values())) == len(keys)


def test_missing_source_images_is_a_clear_error(tmp_path):
    (tmp_path / "PAIRS_expected.tsv").write_text("page\timg\twxh\tlang\talt\n")
    with pytest.raises(FileNotFoundError, match="PAIRS_expected.tsv lacks"):
        with serve_bad_web(source_web=tmp_path):
            pass
