"""Moderation: the real open_nsfw ONNX model, and the moderation-API client against a real local
aiohttp server speaking the OpenAI moderation format (flagged, 429, 5xx, malformed, timeout, key)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from aiohttp import web
from conftest import needs_miniweb
from miniweb_images import real_images
from nsfw_probe import PROBE_HEX, png, render
from PIL import Image

from mella.schema import REJECT_SCHEMA, to_table
from mella.stages.filters.moderation import (
    DEFAULT_NSFW_THRESHOLD,
    APIModerationStage,
    ModerationAPIClient,
    ModerationAPIConfig,
    ModerationConfig,
    NSFWStage,
)

KEY_ENV = "MELLA_TEST_MODERATION_KEY"
KEY = "sk-test-do-not-log-7f3a"


def table(rows: list[dict]) -> pa.Table:
    return to_table(rows, REJECT_SCHEMA)


def solid(rgb, size=(300, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------- open_nsfw
@pytest.fixture(scope="module")
def nsfw() -> NSFWStage:
    with NSFWStage(ModerationConfig(num_cpus=1, batch_size=8)) as stage:
        yield stage


@needs_miniweb()
def test_ordinary_screenshots_pass_with_low_scores(nsfw):
    imgs = real_images(16)
    rows = [{"id": f"s{k}", "lang": "cs", "image": b} for k, (_, b) in enumerate(imgs)]
    out = nsfw(table(rows)).to_pylist()
    scores = [r["nsfw_score"] for r in out]
    assert all(r["reason"] is None and r["image"] for r in out)
    assert all(0.0 <= s < 0.2 for s in scores), scores  # open_nsfw: < 0.2 "likely to be safe"
    assert out[0]["nsfw_score"] == pytest.approx(float(nsfw.scores([imgs[0][1]])[0]), abs=1e-6)


@needs_miniweb()
def test_nsfw_positive_probe_rejected_with_its_score(nsfw):
    probe = png(render(PROBE_HEX))  # synthetic, see tests/nsfw_probe.py; measured P(nsfw) 0.96
    shot = real_images(1)[0][1]
    rows = [
        {"id": "p", "lang": "hu", "image": probe},
        {"id": "s", "lang": "hu", "image": shot},
        {"id": "x", "lang": "hu", "image": b"not an image"},
        {"id": "u", "lang": "hu", "image": None, "stage": "fetch", "reason": "http_404"},
    ]
    out = {r["id"]: r for r in nsfw(table(rows)).to_pylist()}
    p = out["p"]
    assert p["reason"] == "nsfw" and p["stage"] == "moderation" and p["image"] is None
    assert p["nsfw_score"] >= DEFAULT_NSFW_THRESHOLD and f"{p['nsfw_score']:.4f}" in p["detail"]
    assert p["nsfw_score"] == pytest.approx(0.96, abs=0.02)
    assert out["s"]["reason"] is None and out["s"]["nsfw_score"] < 0.2
    assert out["x"]["reason"] == "undecodable" and out["x"]["nsfw_score"] is None
    assert out["u"]["reason"] == "http_404" and out["u"]["nsfw_score"] is None  # upstream reject untouched


def test_nsfw_threshold_is_configurable(nsfw):
    g = solid((90, 110, 140))  # a plain grey-blue scores ~0.32
    score = float(nsfw.scores([g])[0])
    strict = NSFWStage(ModerationConfig(nsfw_threshold=score / 2, num_cpus=1))
    (r,) = strict(table([{"id": "g", "image": g}])).to_pylist()
    assert r["reason"] == "nsfw" and r["nsfw_score"] == pytest.approx(score, abs=1e-6)
    (r,) = nsfw(table([{"id": "g", "image": g}])).to_pylist()
    assert r["reason"] is None and r["nsfw_score"] == pytest.approx(score, abs=1e-6)


@pytest.mark.slow
def test_nsfw_stage_in_ray_actor_pool(ray_session):
    import ray

    cfg = ModerationConfig(num_cpus=1, batch_size=2)
    items = [
        {"id": "p", "image": png(render(PROBE_HEX))},
        {"id": "g", "image": solid((20, 120, 40))},
        {"id": "b", "image": solid((200, 200, 230))},
    ]  # solid colours score < 0.33 (tests/nsfw_probe.py)
    ds = ray.data.from_items(items).map_batches(
        NSFWStage,
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
    )
    out = {r["id"]: r for r in ds.take_all()}
    assert out["p"]["reason"] == "nsfw" and out["g"]["reason"] is None and out["b"]["reason"] is None
    assert all(out[i]["nsfw_score"] is not None for i in out)


# ------------------------------------------------------------------------ moderation API client
RED = solid((250, 0, 0), (64, 64))  # the test server flags images whose first pixel is red
BLUE = solid((0, 0, 250), (64, 64))
CATS = ["violence", "violence/graphic", "self-harm", "sexual", "hate"]


class FakeModerationAPI:
    """A real aiohttp server on 127.0.0.1 speaking the OpenAI moderation format, with a script of
    faults: each entry of ``script`` answers one request (``"429"``, ``"503"``, ``"garbage"``,
    ``"empty"``, ``"slow"``, ``"ok"``); when it runs out, requests are answered normally."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.requests: list[float] = []
        self.auth: list[str] = []
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/moderations", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(time.monotonic())
        self.auth.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        act = self.script.pop(0) if self.script else "ok"
        if act == "429":
            return web.json_response({"error": "rate"}, status=429, headers={"Retry-After": "0.3"})
        if act == "503":
            return web.Response(status=503, text="busy")
        if act == "garbage":
            return web.Response(status=200, text="{not json", content_type="application/json")
        if act == "empty":
            return web.json_response({"results": []})
        if act == "slow":
            await asyncio.sleep(3)
        body = await request.json()
        url = body["input"][0]["image_url"]["url"]
        assert body["model"] == "omni-moderation-latest" and url.startswith("data:image/png;base64,")
        px = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB").getpixel((0, 0))
        red = px[0] > 200 and px[1] < 50
        scores = {c: 0.001 for c in CATS} | ({"violence": 0.97} if red else {})
        return web.json_response(
            {
                "id": "modr-1",
                "model": body["model"],
                "results": [
                    {"flagged": red, "categories": {c: scores[c] > 0.5 for c in CATS}, "category_scores": scores}
                ],
            }
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def api():
    server = FakeModerationAPI()
    yield server
    server.close()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def api_stage(api, **kw) -> APIModerationStage:
    api.script.clear()
    api.requests.clear()
    opts = (
        dict(
            enabled=True,
            base_url=api.base_url,
            api_key_env=KEY_ENV,
            backoff_base_s=0.01,
            rps=100,
            timeout_s=5,
            max_retries=3,
        )
        | kw
    )
    return APIModerationStage(ModerationConfig(api=ModerationAPIConfig(**opts)))


def run(stage, images: dict[str, bytes]) -> dict[str, dict]:
    rows = [{"id": i, "lang": "ru", "image": b} for i, b in images.items()]
    return {r["id"]: r for r in stage(table(rows)).to_pylist()}


def test_api_flagged_and_unflagged(api, key_env):
    st = api_stage(api)
    out = run(st, {"red": RED, "blue": BLUE})
    assert out["red"]["reason"] == "moderation:violence" and out["red"]["image"] is None
    assert json.loads(out["red"]["moderation_scores"])["violence"] == pytest.approx(0.97)
    assert out["blue"]["reason"] is None and out["blue"]["image"] == BLUE
    assert json.loads(out["blue"]["moderation_scores"])["violence"] == pytest.approx(0.001)
    assert st.counters["requests"] == 2 and st.counters["flagged"] == 1
    # a category not configured does not reject
    st = api_stage(api, categories=["sexual"])
    assert run(st, {"red": RED})["red"]["reason"] is None


def test_api_429_retry_after_then_success(api, key_env):
    st = api_stage(api)
    api.script[:] = ["429"]
    t0 = time.monotonic()
    out = run(st, {"blue": BLUE})
    assert out["blue"]["reason"] is None and st.counters["retries"] == 1
    assert len(api.requests) == 2 and api.requests[1] - api.requests[0] >= 0.29  # honoured Retry-After
    assert time.monotonic() - t0 < 3


def test_api_5xx_retried_then_exhausted(api, key_env):
    st = api_stage(api)
    api.script[:] = ["503", "503"]
    assert run(st, {"red": RED})["red"]["reason"] == "moderation:violence"
    assert st.counters["retries"] == 2
    st = api_stage(api, max_retries=2)
    api.script[:] = ["503"] * 3
    r = run(st, {"blue": BLUE})["blue"]
    assert r["reason"] == "moderation_api_error" and "HTTP 503" in r["detail"] and len(api.requests) == 3


def test_api_malformed_response_counted_or_kept(api, key_env):
    st = api_stage(api)
    api.script[:] = ["garbage", "empty"]
    out = run(st, {"a": BLUE})
    out.update(run(st, {"b": BLUE}))
    assert [out[k]["reason"] for k in "ab"] == ["moderation_api_error"] * 2
    assert "not JSON" in out["a"]["detail"] and "not an OpenAI moderation response" in out["b"]["detail"]
    assert st.counters["errors"] == 2 and st.counters["retries"] == 0  # a malformed 200 is not retried
    st = api_stage(api, on_error="keep")
    api.script[:] = ["garbage"]
    r = run(st, {"c": BLUE})["c"]
    assert r["reason"] is None and r["image"] == BLUE and "error" in json.loads(r["moderation_scores"])
    assert st.counters["kept_on_error"] == 1


def test_api_timeout(api, key_env):
    st = api_stage(api, timeout_s=0.3, max_retries=1)
    api.script[:] = ["slow", "slow"]
    t0 = time.monotonic()
    r = run(st, {"a": BLUE})["a"]
    assert r["reason"] == "moderation_api_error" and "Timeout" in r["detail"]
    assert len(api.requests) == 2 and time.monotonic() - t0 < 2.5


def test_api_rate_limit(api, key_env):
    st = api_stage(api, rps=20, max_concurrency=8)
    t0 = time.monotonic()
    out = run(st, {f"i{k}": BLUE for k in range(10)})
    assert all(r["reason"] is None for r in out.values())
    gaps = np.diff(sorted(api.requests))
    assert time.monotonic() - t0 >= 0.45 and np.median(gaps) >= 0.04  # 10 starts spaced 1/20 s


def test_api_key_missing_wrong_and_never_leaked(api, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(RuntimeError, match=KEY_ENV):
        api_stage(api)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    st = api_stage(api)
    r = run(st, {"a": BLUE})["a"]
    assert r["reason"] == "moderation_api_error" and "HTTP 401" in r["detail"] and len(api.requests) == 1
    monkeypatch.setenv(KEY_ENV, KEY)
    st = api_stage(api)
    api.script[:] = ["503", "garbage"]
    r = run(st, {"a": BLUE})["a"]
    assert api.auth[-1] == f"Bearer {KEY}"  # the key was sent ...
    assert KEY not in (r["detail"] + repr(st.client) + repr(st.cfg) + caplog.text)  # ... and shown nowhere


def test_unknown_format_rejected(api, key_env):
    with pytest.raises(ValueError, match="unknown moderation API format"):
        ModerationAPIClient(ModerationAPIConfig(format="acme", api_key_env=KEY_ENV))


def test_retry_count_has_one_name_across_http_clients():
    """Crawler, MT API and moderation API configs all call the retry count ``max_retries`` (issue 11)."""
    import pydantic

    from mella.net import CrawlConfig
    from mella.stages.enrich.translate import APIConfig

    for cls in (CrawlConfig, APIConfig, ModerationAPIConfig):
        assert "max_retries" in cls.model_fields, cls
        assert "retries" not in cls.model_fields, cls
    assert ModerationAPIConfig(max_retries=2).max_retries == 2
    with pytest.raises(pydantic.ValidationError):
        ModerationAPIConfig(retries=2)  # the old name is refused, not silently ignored
