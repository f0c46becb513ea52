"""translate: English captions → target languages (paper 3.1.2: "via either DeepL Translate or Google
Translate based on their supported languages"), one D_ling row per (image, target language).

Backends (``TranslateConfig.backend``, overridable per language with ``backends``):

* ``deepl`` — DeepL API ``POST {base}/v2/translate``, header ``Authorization: DeepL-Auth-Key KEY``, JSON
  ``{"text": [...], "target_lang": "HU", "source_lang": "EN"}`` → ``{"translations": [{"text": ...}]}``.
  Limits (developers.deepl.com, "translating large volumes" / "usage and limits"): ≤ 50 texts and ≤ 128 KiB
  request body per call. Key from ``$DEEPL_AUTH_KEY``; keys ending in ``:fx`` (API Free) default to
  ``https://api-free.deepl.com``, others to ``https://api.deepl.com``.
* ``google`` — Cloud Translation Basic (v2) ``POST {base}/language/translate/v2?key=KEY``, JSON
  ``{"q": [...], "target": "hu", "source": "en", "format": "text"}`` →
  ``{"data": {"translations": [{"translatedText": ...}]}}``. ≤ 128 segments per call (cloud.google.com,
  "Translating text (Basic)"). Key from ``$GOOGLE_TRANSLATE_API_KEY``.
* ``seq2seq`` — a local encoder-decoder through transformers: NLLB-200 (``forced_bos_token_id`` = the
  ``nllb`` code, e.g. ``hun_Latn``), M2M100 (``__hu__``) or Marian (OPUS-MT: one model per pair via
  ``model_paths``, or a multi-target model whose vocabulary has ``>>hun<<`` target tokens).
* ``mllm`` — the captioning MLLM itself, prompted to translate (text only).

Language codes come from ``data/languages.yaml`` (keys ``nllb``, ``m2m100``, ``marian``, ``deepl``,
``google``; English, the source, is its ``source`` entry), so adding a language is adding an entry.

API clients: aiohttp, requests split by count and size, a shared rate limit (minimum interval between
request starts), bounded concurrency, retries with exponential backoff on 429/529/5xx and connection
errors (``Retry-After`` honoured, capped). Non-retryable errors (400, 403, 413, 456 quota) and malformed
responses raise :class:`TranslationAPIError`; the stage turns them into rejects with reason
``mt_<reason>`` for the affected rows, so one failing language never stops the job.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Literal

import aiohttp
from pydantic import Field

from mella.languages import language, load_languages
from mella.models.mllm import GenerationConfig, MLLMConfig, log_batch, timed
from mella.ratelimit import RateLimiter
from mella.resources import PoolConfig, Strict
from mella.retry import Retryable, RetryPolicy, parse_retry_after, retry_async
from mella.schema import record_id
from mella.stages.base import Stage

Backend = Literal["deepl", "google", "seq2seq", "mllm"]


class APIConfig(Strict):
    """HTTP client settings shared by the DeepL and Google clients (defaults per provider when None)."""

    base_url: str | None = Field(
        None, description="default: DeepL api(-free).deepl.com / https://translation.googleapis.com"
    )
    api_key_env: str | None = Field(
        None, description="env var holding the key; default DEEPL_AUTH_KEY / GOOGLE_TRANSLATE_API_KEY"
    )
    max_texts_per_request: int | None = Field(None, ge=1, description="default: 50 (DeepL), 128 (Google)")
    max_request_bytes: int = Field(128 * 1024 - 1024, ge=1024, description="JSON body cap, bytes (DeepL limit 128 KiB)")
    requests_per_second: float = Field(5.0, gt=0, description="rate limit: minimum 1/rps s between request starts")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    max_retries: int = Field(5, ge=0, description="retries on 429/529/5xx, timeouts and connection errors")
    backoff_base_s: float = Field(1.0, ge=0, description="sleep base * 2**attempt s before a retry")
    backoff_max_s: float = Field(60.0, ge=0, description="cap on one backoff sleep (also caps Retry-After)")
    timeout_s: float = Field(60.0, gt=0, description="total timeout of one request, seconds")


class Seq2SeqConfig(Strict):
    """A local encoder-decoder MT model (transformers ``AutoModelForSeq2SeqLM``)."""

    model_path: str | None = Field(
        None, description="one model for all targets (NLLB-200, M2M100, multi-target Marian)"
    )
    model_paths: dict[str, str] = Field(
        default_factory=dict, description="per-language model, e.g. {hu: opus-mt-en-hu}"
    )
    family: Literal["auto", "nllb", "m2m100", "marian"] = "auto"
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_input_tokens: int = Field(512, ge=8)
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=512, num_beams=4, repetition_penalty=1.0)
    )


class TranslateConfig(PoolConfig):
    """Translate stage: backends, target languages, their clients and the pool block."""

    backend: Backend = "seq2seq"
    backends: dict[str, Backend] = Field(default_factory=dict, description="per-language override, e.g. {sr: google}")
    target_langs: list[str] = Field(
        default_factory=list, description="languages to translate into; empty = each row's lang"
    )
    source_lang: str = "en"
    batch_size: int = Field(
        16, ge=1, description="texts per Ray Data batch and per backend call (API clients split further)"
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (seq2seq/mllm on GPU nodes; fractional allowed)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor")
    deepl: APIConfig = Field(default_factory=APIConfig)
    google: APIConfig = Field(default_factory=APIConfig)
    seq2seq: Seq2SeqConfig = Field(default_factory=Seq2SeqConfig)
    mllm: MLLMConfig | None = Field(None, description="for backend=mllm")
    mllm_generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(max_new_tokens=768))


def lang_code(lang: str, system: str) -> str:
    """The code of ``lang`` in MT ``system`` (``nllb``, ``m2m100``, ``deepl``, ``google``, ``marian``).

    ``lang`` is a target or source language (``en``) of :mod:`mella.languages`.
    Raises ``KeyError`` naming the language and system when languages.yaml has no entry or code for it.
    """
    if system not in ("nllb", "m2m100", "marian", "deepl", "google"):
        raise KeyError(f"unknown MT system {system!r}")
    code = getattr(language(lang), system)
    if code is None:
        raise KeyError(f"languages.yaml has no {system!r} code for {lang!r}")
    return code


# ======================================================================================= API clients
class TranslationAPIError(RuntimeError):
    """A translation request failed for good. ``reason``: ``http_<status>``, ``malformed_response``,
    ``retries_exhausted_<status|error>``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MissingAPIKeyError(RuntimeError):
    """The API key environment variable is unset or empty (a configuration error, raised at start)."""


class _APIClient:
    provider = ""
    key_env = ""
    max_texts = 1
    retry_statuses = frozenset({429, 500, 502, 503, 504, 529})

    def __init__(self, cfg: APIConfig | None = None, api_key: str | None = None) -> None:
        self.cfg = cfg or APIConfig()
        env = self.cfg.api_key_env or self.key_env
        self.api_key = api_key if api_key is not None else os.environ.get(env, "")
        if not self.api_key:
            raise MissingAPIKeyError(f"{self.provider}: set the API key in ${env} (or api_key_env in the config)")
        self.max_texts = min(self.cfg.max_texts_per_request or self.max_texts, self.max_texts)
        self.requests = 0  # HTTP requests sent, retries included

    # -- per provider
    def request(self, texts: list[str], target: str, source: str) -> tuple[str, dict, dict, dict]:
        """(url, params, headers, json body)."""
        raise NotImplementedError

    def parse(self, data, n: int) -> list[str]:
        raise NotImplementedError

    # -- shared
    def batches(self, texts: list[str]) -> list[tuple[int, int]]:
        """Split ``texts`` into ``[start, end)`` ranges of ≤ ``max_texts`` and ≤ ``max_request_bytes`` of JSON."""
        out, start, size = [], 0, 0
        for i, t in enumerate(texts):
            n = len(json.dumps(t, ensure_ascii=False).encode("utf-8")) + 2
            if i > start and (i - start >= self.max_texts or size + n > self.cfg.max_request_bytes - 256):
                out.append((start, i))
                start, size = i, 0
            size += n
        if texts:
            out.append((start, len(texts)))
        return out

    async def _post(
        self, session: aiohttp.ClientSession, limiter: RateLimiter, texts: list[str], target: str, source: str
    ) -> list[str]:
        url, params, headers, body = self.request(texts, target, source)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")  # the size batches() measured
        headers = {**headers, "Content-Type": "application/json; charset=utf-8"}
        policy = RetryPolicy(
            retries=self.cfg.max_retries,
            backoff_base_s=self.cfg.backoff_base_s,
            backoff_max_s=self.cfg.backoff_max_s,
            jitter=0.0,
        )

        async def attempt(_n: int, _left) -> list[str]:
            await limiter.wait()
            self.requests += 1
            retry_after = None
            try:
                async with session.post(url, params=params, headers=headers, data=data) as resp:
                    raw = await resp.read()
                    if resp.status == 200:
                        try:
                            answer = json.loads(raw)
                        except ValueError:
                            raise TranslationAPIError("malformed_response", f"not JSON: {raw[:200]!r}") from None
                        return self.parse(answer, len(texts))
                    last = str(resp.status)
                    if resp.status not in self.retry_statuses:
                        raise TranslationAPIError(f"http_{resp.status}", raw[:300].decode("utf-8", "replace"))
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                last = type(e).__name__
            raise Retryable(
                TranslationAPIError(f"retries_exhausted_{last}", f"{self.cfg.max_retries + 1} attempts"), retry_after
            )

        return await retry_async(attempt, policy)

    async def translate_async(self, texts: list[str], lang: str, source_lang: str = "en") -> list[str]:
        """Translate ``texts`` (English by default) into ``lang``; output aligned with input.

        Raises :class:`TranslationAPIError` when any request fails for good (after retries), ``KeyError``
        when languages.yaml has no code for ``lang`` in this provider.
        """
        target, source = lang_code(lang, self.provider), lang_code(source_lang, self.provider)
        limiter = RateLimiter(self.cfg.requests_per_second)
        sem = asyncio.Semaphore(self.cfg.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)

        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(a: int, b: int) -> list[str]:
                async with sem:
                    return await self._post(session, limiter, texts[a:b], target, source)

            parts = await asyncio.gather(*(one(a, b) for a, b in self.batches(texts)))
        return [t for part in parts for t in part]

    def translate(self, texts: list[str], lang: str, source_lang: str = "en") -> list[str]:
        """Synchronous :meth:`translate_async` (own event loop; for Ray actors and scripts)."""
        return asyncio.run(self.translate_async(texts, lang, source_lang))

    @property
    def tag(self) -> str:
        return self.provider


class DeepLClient(_APIClient):
    provider = "deepl"
    key_env = "DEEPL_AUTH_KEY"
    max_texts = 50

    def request(self, texts, target, source):
        base = self.cfg.base_url or (
            "https://api-free.deepl.com" if self.api_key.endswith(":fx") else "https://api.deepl.com"
        )
        headers = {"Authorization": f"DeepL-Auth-Key {self.api_key}", "User-Agent": "mella/0.1"}
        return (
            f"{base.rstrip('/')}/v2/translate",
            {},
            headers,
            {"text": texts, "target_lang": target, "source_lang": source},
        )

    def parse(self, data, n):
        try:
            out = [t["text"] for t in data["translations"]]
        except (KeyError, TypeError) as e:
            raise TranslationAPIError("malformed_response", f"DeepL: missing {e}") from None
        if len(out) != n or not all(isinstance(t, str) for t in out):
            raise TranslationAPIError("malformed_response", f"DeepL: {len(out)} translations for {n} texts")
        return out


class GoogleClient(_APIClient):
    provider = "google"
    key_env = "GOOGLE_TRANSLATE_API_KEY"
    max_texts = 128

    def request(self, texts, target, source):
        base = (self.cfg.base_url or "https://translation.googleapis.com").rstrip("/")
        body = {"q": texts, "target": target, "source": source, "format": "text"}
        return f"{base}/language/translate/v2", {"key": self.api_key}, {"User-Agent": "mella/0.1"}, body

    def parse(self, data, n):
        try:
            out = [t["translatedText"] for t in data["data"]["translations"]]
        except (KeyError, TypeError) as e:
            raise TranslationAPIError("malformed_response", f"Google: missing {e}") from None
        if len(out) != n or not all(isinstance(t, str) for t in out):
            raise TranslationAPIError("malformed_response", f"Google: {len(out)} translations for {n} texts")
        return out


# ===================================================================================== local models
class Seq2SeqTranslator:
    """NLLB-200 / M2M100 / Marian via transformers. ``translate(texts, lang)`` → translations, in order.

    The family is read from the checkpoint (``model_type`` ``marian`` or ``m2m_100``; an ``m2m_100``
    whose vocabulary has ``eng_Latn`` is NLLB) unless set. Raises ``ValueError`` for an unsupported
    model type, ``KeyError`` for a language without a code, ``RuntimeError`` when a target language
    token is missing from the vocabulary.
    """

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        import torch

        if not cfg.model_path and not cfg.model_paths:
            raise ValueError("seq2seq translation needs seq2seq.model_path or seq2seq.model_paths")
        self.cfg = cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = {
            "auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[cfg.dtype]
        self._loaded: dict[str, tuple] = {}

    def _load(self, path: str) -> tuple:
        if path not in self._loaded:
            from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

            mtype = AutoConfig.from_pretrained(path).model_type
            tok = AutoTokenizer.from_pretrained(path)
            family = self.cfg.family
            if family == "auto":
                if mtype == "marian":
                    family = "marian"
                elif mtype == "m2m_100":
                    family = "nllb" if "eng_Latn" in tok.get_vocab() else "m2m100"
                else:
                    raise ValueError(f"{path}: model_type {mtype!r} is not a supported MT model (marian, m2m_100)")
            model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
            self._loaded[path] = (tok, model, family)
        return self._loaded[path]

    def model_for(self, lang: str) -> str:
        path = self.cfg.model_paths.get(lang) or self.cfg.model_path
        if not path:
            raise KeyError(f"no seq2seq model for {lang!r} (set seq2seq.model_path or seq2seq.model_paths.{lang})")
        return path

    def tag(self, lang: str) -> str:
        path = self.model_for(lang)
        return f"{self._load(path)[2]}:{os.path.basename(os.path.normpath(path))}"

    def translate(self, texts: list[str], lang: str, source_lang: str = "en") -> list[str]:
        import torch

        tok, model, family = self._load(self.model_for(lang))
        gen = self.cfg.generation
        kwargs = dict(
            max_new_tokens=gen.max_new_tokens,
            min_new_tokens=gen.min_new_tokens,
            num_beams=gen.num_beams,
            do_sample=gen.do_sample,
            repetition_penalty=gen.repetition_penalty,
        )
        if gen.do_sample:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
        vocab = tok.get_vocab()
        if family in ("nllb", "m2m100"):
            tgt = lang_code(lang, family)
            tgt_token = tgt if family == "nllb" else f"__{tgt}__"
            if tgt_token not in vocab:
                raise RuntimeError(f"target token {tgt_token!r} not in the vocabulary of {self.model_for(lang)}")
            if hasattr(tok, "src_lang"):
                tok.src_lang = lang_code(source_lang, family) if family == "nllb" else source_lang
            kwargs["forced_bos_token_id"] = vocab[tgt_token]
        elif family == "marian":
            marker = f">>{lang_code(lang, 'marian')}<<"
            if marker in vocab:  # multi-target model; single-pair OPUS-MT models have no such token
                texts = [f"{marker} {t}" for t in texts]
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.cfg.max_input_tokens)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


class MLLMTranslator:
    """Translation by the captioning MLLM, text only (no image): an instruction prompt per text."""

    PROMPT = (
        "Translate the following English text into {language}. Keep the meaning, names and numbers; "
        "output only the {language} translation, nothing else.\n\n{text}"
    )

    def __init__(self, cfg: MLLMConfig, gen: GenerationConfig) -> None:
        from mella.models.mllm import MLLM

        self.mllm = MLLM(cfg)
        self.gen = gen

    def tag(self, lang: str) -> str:
        return f"mllm:{self.mllm.name}"

    def translate(self, texts: list[str], lang: str, source_lang: str = "en") -> list[str]:
        name = load_languages()[lang].name
        return self.mllm.generate([(None, self.PROMPT.format(language=name, text=t)) for t in texts], self.gen)


def make_backend(name: str, cfg: TranslateConfig):
    """The backend object for ``name``; API clients raise :class:`MissingAPIKeyError` without a key."""
    if name == "deepl":
        return DeepLClient(cfg.deepl)
    if name == "google":
        return GoogleClient(cfg.google)
    if name == "seq2seq":
        return Seq2SeqTranslator(cfg.seq2seq)
    if name == "mllm":
        if cfg.mllm is None:
            raise ValueError("backend=mllm needs translate.mllm (family, model_path)")
        return MLLMTranslator(cfg.mllm, cfg.mllm_generation)
    raise ValueError(f"unknown translation backend {name!r}")


def _tag(backend, lang: str) -> str:
    t = backend.tag
    return t(lang) if callable(t) else t


# ============================================================================================ stage
class TranslateStage(Stage):
    """D_ling rows with ``caption_en`` → one row per (image, target language).

    Output rows: ``lang`` = target, ``id`` = :func:`record_id` (target, page, image), ``text`` = the
    translation, ``mt_backend`` = backend tag (``deepl``, ``google``, ``nllb:<model>``, ``marian:<model>``,
    ``mllm:<family>:<model>``). Rejects (stage ``translate``): ``no_caption``; ``mt_<reason>`` from
    :class:`TranslationAPIError`; ``empty_translation``. Target languages are checked at construction;
    backends are built (API keys checked, models loaded) in :meth:`setup`, not on the first batch.
    """

    name = "translate"
    reads = ("caption_en", "lang", "image")  # image: each output row carries the picture
    writes = ("lang", "id", "text", "mt_backend")
    rejects = True
    d_ling = True

    def __init__(self, cfg: TranslateConfig, stats_dir: str | None = None) -> None:
        self.cfg = cfg
        self.stats_dir = stats_dir
        self.resources, self.batch_size = cfg.stage_resources(), cfg.batch_size
        for lang in cfg.target_langs:
            if lang not in load_languages():  # unknown language → error now, not mid-run
                raise KeyError(f"target language {lang!r} is not in languages.yaml")

    def setup(self) -> None:
        self._backends: dict[str, object] = {}
        cfg = self.cfg
        if cfg.target_langs:
            needed = {cfg.backends.get(lang, cfg.backend) for lang in cfg.target_langs}
        else:  # each row's own language: any override may be needed
            needed = {cfg.backend} | set(cfg.backends.values())
        for name in needed:
            self._backend(name)

    def _backend(self, name: str):
        if name not in self._backends:
            self._backends[name] = make_backend(name, self.cfg)
        return self._backends[name]

    def process(self, rows: list[dict]) -> list[dict]:
        out: list[dict] = []
        jobs: dict[str, list[dict]] = {}
        for r in rows:
            if not (r.get("caption_en") or "").strip():
                self.reject(r, "no_caption")
                out.append(r)
                continue
            for lang in self.cfg.target_langs or [r["lang"]]:
                jobs.setdefault(lang, []).append(r)
        for lang, src in jobs.items():
            backend = self._backend(self.cfg.backends.get(lang, self.cfg.backend))
            for i in range(0, len(src), self.cfg.batch_size):
                chunk = src[i : i + self.cfg.batch_size]
                out.extend(self._translate_chunk(backend, chunk, lang))
        return out

    def _translate_chunk(self, backend, chunk: list[dict], lang: str) -> list[dict]:
        texts = [r["caption_en"] for r in chunk]
        new = []
        for r in chunk:
            n = dict(r)
            n.update(lang=lang, id=record_id(lang, r.get("page_url"), r.get("image_url")), text=None, mt_backend=None)
            new.append(n)
        try:
            result, secs = timed(backend.translate, texts, lang, self.cfg.source_lang)
            tag = _tag(backend, lang)
        except TranslationAPIError as e:
            for n in new:
                self.reject(n, f"mt_{e.reason}", e.detail)
            return new
        log_batch(self.stats_dir, self.name, len(chunk), secs, lang=lang, backend=tag)
        for n, t in zip(new, result):
            n["mt_backend"] = tag
            if t and t.strip():
                n["text"] = t.strip()
            else:
                self.reject(n, "empty_translation", tag)
        return new
