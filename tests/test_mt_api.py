"""DeepL and Google Cloud Translation (v2) clients against a real local aiohttp server that speaks each
API's documented request/response format: batching, rate limiting, 429 back-off, 5xx retry, non-retryable
errors, malformed responses, missing key, and the translate stage's per-language rejects."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiohttp import web

from mella.schema import REJECT_SCHEMA, record_id, to_table
from mella.stages.enrich.translate import (
    APIConfig,
    DeepLClient,
    GoogleClient,
    MissingAPIKeyError,
    TranslateConfig,
    TranslateStage,
    TranslationAPIError,
)


class FakeAPI:
    """Serves ``POST /v2/translate`` (DeepL) and ``POST /language/translate/v2`` (Google) on 127.0.0.1.

    ``script`` is a list of responses to give before answering normally: ``(status, body, headers)``;
    ``fail_targets`` maps a target code to a status always returned for it. Every request is recorded.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, str, dict]] = []
        self.fail_targets: dict[str, int] = {}
        self.times: list[float] = []

    def _scripted(self):
        if self.script:
            status, body, headers = self.script.pop(0)
            return web.Response(status=status, text=body, headers=headers)
        return None

    async def deepl(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(
            {
                "api": "deepl",
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": body,
                "bytes": request.content_length,
            }
        )
        self.times.append(time.monotonic())
        if (r := self._scripted()) is not None:
            return r
        if body["target_lang"] in self.fail_targets:
            return web.Response(status=self.fail_targets[body["target_lang"]], text='{"message":"Quota exceeded"}')
        if request.headers.get("Authorization") != "DeepL-Auth-Key test-key":
            return web.Response(status=403, text='{"message":"Wrong auth"}')
        return web.json_response(
            {
                "translations": [
                    {"detected_source_language": body.get("source_lang", "EN"), "text": f"[{body['target_lang']}] {t}"}
                    for t in body["text"]
                ]
            }
        )

    async def google(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(
            {
                "api": "google",
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": body,
                "bytes": request.content_length,
            }
        )
        self.times.append(time.monotonic())
        if (r := self._scripted()) is not None:
            return r
        if request.query.get("key") != "test-key":
            return web.json_response({"error": {"code": 400, "message": "API key not valid"}}, status=400)
        return web.json_response(
            {"data": {"translations": [{"translatedText": f"[{body['target']}] {q}"} for q in body["q"]]}}
        )


@pytest.fixture()
def api():
    fake = FakeAPI()
    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/v2/translate", fake.deepl)
    app.router.add_post("/language/translate/v2", fake.google)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{port}"
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _cfg(api, **kw) -> APIConfig:
    base = dict(base_url=api.base_url, requests_per_second=1000, backoff_base_s=0.05, max_retries=3, timeout_s=10)
    return APIConfig(**{**base, **kw})


TEXTS = [f"A photo of market stall number {i} selling fresh fruit." for i in range(120)]


def test_deepl_format_and_batching_by_count(api):
    client = DeepLClient(_cfg(api), api_key="test-key")
    out = client.translate(TEXTS, "hu")
    assert out == [f"[HU] {t}" for t in TEXTS]
    assert [len(r["body"]["text"]) for r in api.requests] == [50, 50, 20]  # DeepL: ≤ 50 texts per request
    r = api.requests[0]
    assert r["headers"]["Authorization"] == "DeepL-Auth-Key test-key"
    assert r["headers"]["Content-Type"].startswith("application/json")
    assert r["body"]["target_lang"] == "HU" and r["body"]["source_lang"] == "EN"
    assert client.requests == 3


def test_deepl_batching_by_request_size(api):
    long = ["ű" * 3000 + f" {i}" for i in range(10)]  # ~6 KB of UTF-8 JSON each
    client = DeepLClient(_cfg(api, max_request_bytes=16 * 1024), api_key="test-key")
    assert client.translate(long, "hu") == [f"[HU] {t}" for t in long]
    assert len(api.requests) >= 4 and sum(len(r["body"]["text"]) for r in api.requests) == 10
    assert all(r["bytes"] <= 16 * 1024 for r in api.requests)


def test_google_format_and_batching(api):
    texts = TEXTS + TEXTS + TEXTS[:60]  # 300 segments
    client = GoogleClient(_cfg(api), api_key="test-key")
    out = client.translate(texts, "th")
    assert out == [f"[th] {t}" for t in texts]
    assert [len(r["body"]["q"]) for r in api.requests] == [128, 128, 44]  # Google v2: ≤ 128 segments
    r = api.requests[0]
    assert r["query"] == {"key": "test-key"}
    assert r["body"]["target"] == "th" and r["body"]["source"] == "en" and r["body"]["format"] == "text"


def test_429_backs_off_honouring_retry_after(api):
    api.script = [(429, '{"message":"Too many requests"}', {"Retry-After": "0.3"})] * 2
    client = DeepLClient(_cfg(api), api_key="test-key")
    t0 = time.monotonic()
    assert client.translate(TEXTS[:3], "cs") == [f"[CS] {t}" for t in TEXTS[:3]]
    assert len(api.requests) == 3
    gaps = [b - a for a, b in zip(api.times, api.times[1:])]
    assert all(g >= 0.28 for g in gaps), gaps
    assert time.monotonic() - t0 >= 0.6


def test_429_without_retry_after_uses_exponential_backoff(api):
    api.script = [(429, "", {})] * 3
    client = GoogleClient(_cfg(api, backoff_base_s=0.1), api_key="test-key")
    assert client.translate(["hello"], "vi") == ["[vi] hello"]
    gaps = [b - a for a, b in zip(api.times, api.times[1:])]
    assert len(gaps) == 3 and gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, gaps  # 0.1, 0.2, 0.4 s


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_5xx_is_retried_then_succeeds(api, status):
    api.script = [(status, "server error", {})]
    client = DeepLClient(_cfg(api), api_key="test-key")
    assert client.translate(["Good morning"], "ko") == ["[KO] Good morning"]
    assert len(api.requests) == 2


def test_5xx_forever_exhausts_retries(api):
    api.script = [(500, "boom", {})] * 10
    client = GoogleClient(_cfg(api, max_retries=2), api_key="test-key")
    with pytest.raises(TranslationAPIError) as e:
        client.translate(["x"], "ru")
    assert e.value.reason == "retries_exhausted_500"
    assert len(api.requests) == 3


@pytest.mark.parametrize("status", [400, 403, 413, 456])
def test_non_retryable_status_fails_at_once(api, status):
    api.script = [(status, '{"message":"no"}', {})]
    client = DeepLClient(_cfg(api), api_key="test-key")
    with pytest.raises(TranslationAPIError) as e:
        client.translate(["x"], "ar")
    assert e.value.reason == f"http_{status}" and len(api.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        "<html>proxy error</html>",
        '{"translation": []}',
        '{"translations": [{"txt": "a"}]}',
        '{"translations": [{"text": "a"}, {"text": "b"}]}',
        '{"translations": null}',
        "[]",
    ],
)
def test_deepl_malformed_response(api, body):
    api.script = [(200, body, {"Content-Type": "application/json"})]
    client = DeepLClient(_cfg(api), api_key="test-key")
    with pytest.raises(TranslationAPIError) as e:
        client.translate(["only one text"], "hu")
    assert e.value.reason == "malformed_response"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"data": {}}',
        '{"data": {"translations": [{"text": "a"}]}}',
        '{"data": {"translations": [{"translatedText": 5}]}}',
    ],
)
def test_google_malformed_response(api, body):
    api.script = [(200, body, {})]
    client = GoogleClient(_cfg(api), api_key="test-key")
    with pytest.raises(TranslationAPIError) as e:
        client.translate(["only one text"], "sr")
    assert e.value.reason == "malformed_response"


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DEEPL_AUTH_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_TRANSLATE_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="DEEPL_AUTH_KEY"):
        DeepLClient(APIConfig())
    with pytest.raises(MissingAPIKeyError, match="MY_KEY"):
        GoogleClient(APIConfig(api_key_env="MY_KEY"))


def test_key_from_environment_and_free_endpoint(monkeypatch, api):
    monkeypatch.setenv("DEEPL_AUTH_KEY", "test-key")
    client = DeepLClient(_cfg(api))
    assert client.translate(["a"], "hu") == ["[HU] a"]
    monkeypatch.setenv("DEEPL_AUTH_KEY", "abc:fx")
    assert DeepLClient(APIConfig()).request(["a"], "HU", "EN")[0] == "https://api-free.deepl.com/v2/translate"
    monkeypatch.setenv("DEEPL_AUTH_KEY", "abc")
    assert DeepLClient(APIConfig()).request(["a"], "HU", "EN")[0] == "https://api.deepl.com/v2/translate"


def test_rate_limit_spaces_request_starts(api):
    client = GoogleClient(_cfg(api, requests_per_second=10, concurrency=4), api_key="test-key")
    client.max_texts = 1  # one request per text
    t0 = time.monotonic()
    client.translate([f"t{i}" for i in range(6)], "hu")
    # the 6th request may not start before 5 intervals of 1/10 s, whatever the concurrency
    assert len(api.requests) == 6 and time.monotonic() - t0 >= 0.5


def test_translate_stage_with_api_backends_and_per_language_rejects(api, monkeypatch):
    """One row per (image, language); a language that fails (DeepL 456 quota) becomes counted rejects."""
    monkeypatch.setenv("DEEPL_AUTH_KEY", "test-key")
    monkeypatch.setenv("GOOGLE_TRANSLATE_API_KEY", "test-key")
    api.fail_targets = {"TH": 456}
    rows = []
    for i in range(5):
        page, img = f"http://x.test/p{i}.html", f"http://x.test/{i}.png"
        rows.append(
            {
                "id": record_id("vi", page, img),
                "lang": "vi",
                "page_url": page,
                "image_url": img,
                "caption_en": f"A screenshot of an installer dialog, step {i}.",
            }
        )
    rows.append({"id": "gone", "lang": "vi", "stage": "decode", "reason": "truncated"})  # rejected upstream
    rows.append({"id": "nocap", "lang": "vi", "page_url": "p", "image_url": "i", "caption_en": "  "})
    cfg = TranslateConfig(
        backend="deepl",
        backends={"sr": "google"},
        target_langs=["hu", "sr", "th"],
        batch_size=2,
        deepl=_cfg(api),
        google=_cfg(api),
    )
    out = TranslateStage(cfg)(to_table(rows, REJECT_SCHEMA)).to_pylist()
    kept = [r for r in out if r["reason"] is None]
    assert sorted((r["lang"], r["mt_backend"]) for r in kept) == sorted([("hu", "deepl")] * 5 + [("sr", "google")] * 5)
    assert all(r["text"] == f"[{'HU' if r['lang'] == 'hu' else 'sr'}] {r['caption_en']}" for r in kept)
    assert all(r["id"] == record_id(r["lang"], r["page_url"], r["image_url"]) for r in kept)
    rej = [(r["stage"], r["reason"]) for r in out if r["reason"] is not None]
    assert sorted(rej) == sorted(
        [("translate", "mt_http_456")] * 5 + [("decode", "truncated"), ("translate", "no_caption")]
    )
    # batch_size=2 per backend call: 5 rows → 3 calls per language
    assert sum(1 for r in api.requests if r["api"] == "deepl" and r["body"]["target_lang"] == "HU") == 3
