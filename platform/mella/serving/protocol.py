"""OpenAI chat-completions protocol: request validation and response objects (no torch).

Follows the OpenAI Chat Completions API (https://platform.openai.com/docs/api-reference/chat):
``messages`` with ``role`` system/user/assistant and ``content`` either a string or a list of parts
``{"type": "text", "text": ...}`` / ``{"type": "image_url", "image_url": {"url": ...}}``; errors as
``{"error": {"message", "type", "param", "code"}}`` so the official client raises the matching class
(400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413/500 APIStatusError).

Images come inline only: a ``data:image/...;base64,`` URL or bare base64. Remote ``http(s)://`` URLs
are refused (a server that fetches arbitrary URLs is an SSRF vector). Limits (ServeConfig): decoded
bytes per image, width × height per image (checked from the header before pixels are decoded, plus
Pillow's decompression-bomb guard), images per request, messages, ``max_tokens``.
Deviations from OpenAI: ``temperature`` defaults to 0 (greedy, reproducible evaluation) and is 0 or at least
:data:`TEMPERATURE_MIN`; ``n`` must be 1 and ``stream`` false; numbers are strict (no booleans or strings).

Bounded work before validation: JSON is parsed by pydantic-core (bounded nesting, :func:`parse_json`); user text
is checked by :class:`TextRules` (character budget, Unicode, special tokens of the tokenizer) before it is
tokenised or any image is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic_core
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mella.serving.config import ServeConfig

#: Smallest sampling temperature above 0. Dividing logits by a smaller one overflows to inf/nan ("probability
#: tensor contains either inf, nan or element < 0"); vLLM (``sampling_params.py``, ``_MAX_TEMP``) raises
#: 0 < T < 0.01 to 0.01 for the same reason. We refuse it instead: 0 means greedy.
TEMPERATURE_MIN = 0.01
#: ``torch.manual_seed`` accepts seeds in [-0x8000_0000_0000_0000, 0xffff_ffff_ffff_ffff] (torch docs) and raises
#: ``RuntimeError``/``ValueError: Overflow when unpacking long long`` outside.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class RequestError(ValueError):
    """A request that cannot be served as sent (HTTP 400): too long, special tokens, bad image, bad sampling.

    ``code``: OpenAI-style machine-readable reason; ``param``: the offending field (dotted path) or None.
    """

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class GenerationFailed:
    """A request whose generation raised although it passed validation (a server fault, HTTP 500).

    Returned as a value for that request only: its batch-mates were retried one by one and got their results.
    """

    message: str


@dataclass
class GenRequest:
    """One chat request. ``messages``: ``[{"role": str, "parts": [("text", str) | ("image", bytes)]}]``.

    ``max_tokens``: new tokens at most; ``temperature`` 0 = greedy; ``seed`` seeds torch's RNG for
    sampling (requests that share adapter and sampling settings share one ``generate`` call).
    """

    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class GenResult:
    """Generated ``text`` and token counts; ``finish_reason`` is ``stop`` or ``length`` (OpenAI terms)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S
)


class ApiError(Exception):
    """An HTTP error in OpenAI's shape. ``status``: HTTP code; ``code``: machine-readable reason."""

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, type_: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ImageUrl(BaseModel):
    url: str
    detail: str | None = None


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


_Temperature = Annotated[float, Field(strict=True, ge=0, le=2)]  # strict: true/"1" are not numbers


class ChatRequest(BaseModel):
    """The subset of the OpenAI chat-completions body we serve; unknown fields are ignored.

    Numbers are strict (``max_tokens: true`` or ``"8"`` are refused, not read as 1 and 8) and finite.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: Annotated[int, Field(strict=True, ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(strict=True, ge=1)] | None = None
    temperature: _Temperature = 0.0
    top_p: Annotated[float, Field(strict=True, gt=0, le=1)] = 1.0
    seed: Annotated[int, Field(strict=True, ge=SEED_MIN, le=SEED_MAX)] | None = None
    n: Annotated[int, Field(strict=True)] = 1
    stream: Annotated[bool, Field(strict=True)] = False

    @field_validator("temperature")
    @classmethod
    def _sane_temperature(cls, v: float) -> float:
        if 0 < v < TEMPERATURE_MIN:
            raise ValueError(f"temperature must be 0 (greedy) or at least {TEMPERATURE_MIN}")
        return v


def check_sampling(req: GenRequest) -> None:
    """The engine-side twin of :class:`ChatRequest`'s number rules (for callers that skip the HTTP layer, e.g.
    Ray Data evaluation). Raises :class:`RequestError` naming the field."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not is_int(req.max_tokens) or req.max_tokens < 1:
        raise RequestError(f"max_tokens must be an integer >= 1, got {req.max_tokens!r}", param="max_tokens")
    if not is_num(req.temperature) or not (req.temperature == 0 or TEMPERATURE_MIN <= req.temperature <= 2):
        raise RequestError(
            f"temperature must be 0 or in [{TEMPERATURE_MIN}, 2], got {req.temperature!r}", param="temperature"
        )
    if not is_num(req.top_p) or not 0 < req.top_p <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {req.top_p!r}", param="top_p")
    if req.seed is not None and (not is_int(req.seed) or not SEED_MIN <= req.seed <= SEED_MAX):
        raise RequestError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {req.seed!r}", param="seed")


_SURROGATE = re.compile("[\ud800-\udfff]")


class TextRules:
    """Checks on user text that need no tokenising: valid Unicode, no special token, a character budget.

    * Special tokens come from the tokenizer: ``all_special_tokens`` plus every added token marked special
      (``added_tokens_decoder``), plus ``extra`` (e.g. the backbone's image placeholder). A user writing
      ``<|im_start|>`` or ``<|image_pad|>`` would forge chat turns or desynchronise image features and tokens.
      Added tokens with ``normalized=True`` are also looked for in the text after the tokenizer's normalizer.
    * Lone surrogates (``"\\ud800"``) are not encodable: the tokenizer raises ``TypeError`` on them.
    * ``max_chars = max_prompt_tokens × max_token_chars``, ``max_token_chars`` = the longest vocabulary entry
      (characters; a byte-level BPE entry has one character per byte, so it bounds the text characters one token
      can cover): a longer text cannot fit in ``max_prompt_tokens`` tokens and is refused before tokenising
      (Qwen2-VL: 128 × 8192 = 1,048,576 characters). A normalizer that shrinks text (NFC composing combining
      marks) could make this refusal conservative; it never lets an over-long prompt through, the token count
      after tokenising is still checked.
    """

    def __init__(
        self,
        specials: Iterable[str],
        max_token_chars: int,
        max_prompt_tokens: int,
        normalized_specials: Iterable[str] = (),
        normalize: Any = None,
    ):
        self.specials = sorted(set(specials), key=lambda t: (-len(t), t))
        self.max_chars = max_prompt_tokens * max(1, max_token_chars)
        self.max_prompt_tokens = max_prompt_tokens
        self._raw = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        norm = sorted(set(normalized_specials), key=lambda t: (-len(t), t))
        self._norm = re.compile("|".join(map(re.escape, norm))) if norm and normalize else None
        self._normalize = normalize

    @classmethod
    def from_tokenizer(cls, tok: Any, max_prompt_tokens: int, extra: Iterable[str] = ()) -> TextRules:
        """Rules for a transformers tokenizer (reads its special and added tokens and its vocabulary)."""
        added = {t.content: t for t in tok.added_tokens_decoder.values()}
        specials = {t for t in tok.all_special_tokens if t} | {c for c, t in added.items() if t.special} | set(extra)
        normalized = [c for c in specials if c in added and added[c].normalized]
        normalizer = getattr(getattr(tok, "backend_tokenizer", None), "normalizer", None)
        return cls(
            specials,
            max(map(len, tok.get_vocab())),
            max_prompt_tokens,
            normalized,
            normalizer.normalize_str if normalizer is not None else None,
        )

    @classmethod
    def from_pretrained(cls, path: str, max_prompt_tokens: int) -> TextRules:
        """Rules for the tokenizer saved in a local checkpoint directory ``path``."""
        from transformers import AutoTokenizer

        return cls.from_tokenizer(AutoTokenizer.from_pretrained(str(path)), max_prompt_tokens)

    def check(self, texts: list[tuple[str | None, str]]) -> None:
        """``texts``: ``(param, text)`` pairs of one request. Raises :class:`RequestError`: ``prompt_too_long``
        (checked first, O(1) per text), ``invalid_text`` (lone surrogate), ``special_token``."""
        total = sum(len(t) for _, t in texts)
        if total > self.max_chars:
            raise RequestError(
                f"prompt text has {total} characters; at most {self.max_chars} can fit in "
                f"max_prompt_tokens={self.max_prompt_tokens} tokens",
                "prompt_too_long",
                "messages",
            )
        for param, text in texts:
            if (m := _SURROGATE.search(text)) is not None:
                raise RequestError(
                    f"text is not valid Unicode: lone surrogate U+{ord(m.group()):04X} at character {m.start()}",
                    "invalid_text",
                    param,
                )
            m = self._raw.search(text) if self._raw else None
            if m is None and self._norm is not None:
                m = self._norm.search(self._normalize(text))
            if m is not None:
                raise RequestError(
                    f"text contains the special token {m.group()!r}, which user text may not contain",
                    "special_token",
                    param,
                )


def parse_json(body: bytes) -> dict:
    """Body bytes → JSON object. Raises :class:`ApiError` 400 ``invalid_json``.

    Parsed by pydantic-core's JSON parser (jiter), which bounds the work: nesting deeper than its recursion limit
    (about 200 levels: 201 nested arrays parse, 202 do not, measured with pydantic-core 2.50.5), integers over
    4,300 digits, invalid UTF-8, lone surrogate escapes (``"\\ud800"``) and ``NaN``/``Infinity`` all raise
    ``ValueError`` (Python's ``json`` raises ``RecursionError`` on deep nesting).
    """
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    return data


def parse_request(data: dict, cfg: ServeConfig) -> ChatRequest:
    """Validate the JSON object against :class:`ChatRequest` and the caps. Raises :class:`ApiError` 400."""
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ApiError(400, f"invalid request: {where}: {err['msg']}", "invalid_request", where) from exc
    if req.n != 1:
        raise ApiError(400, "only n=1 is supported", "unsupported_parameter", "n")
    if req.stream:
        raise ApiError(400, "streaming is not supported; send stream=false", "unsupported_parameter", "stream")
    if len(req.messages) > cfg.max_messages:
        raise ApiError(400, f"more than {cfg.max_messages} messages", "too_many_messages", "messages")
    max_tokens = req.max_completion_tokens or req.max_tokens or cfg.default_max_tokens
    if max_tokens > cfg.max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens {max_tokens} exceeds the limit {cfg.max_tokens_limit}",
            "max_tokens_too_large",
            "max_tokens",
        )
    return req


def decode_image_url(url: str, cfg: ServeConfig, param: str) -> bytes:
    """A data URL or bare base64 → validated image file bytes. Raises :class:`ApiError` 400.

    Checks in order: scheme (no remote URLs), encoded length against ``max_image_bytes`` (before
    decoding), strict base64, decoded size, Pillow format (``ALLOWED_FORMATS``), width × height against
    ``max_image_pixels`` (from the header), then a full decode with decompression-bomb warnings as errors.
    """
    url = url.strip()
    if url.startswith(("http://", "https://", "file:", "ftp:")):
        raise ApiError(
            400,
            "remote image URLs are not fetched; send the image inline as a data: URL or base64",
            "remote_image_url",
            param,
        )
    if url.startswith("data:"):
        m = _DATA_URL.match(url)
        if not m or not m.group("b64"):
            raise ApiError(400, "image data URL must be data:image/<type>;base64,<data>", "invalid_image", param)
        if m.group("mime") and not m.group("mime").startswith("image/"):
            raise ApiError(400, f"data URL has media type {m.group('mime')}, not image/*", "invalid_image", param)
        payload = m.group("data")
    else:
        payload = url
    payload = re.sub(r"\s+", "", payload)
    if len(payload) * 3 // 4 > cfg.max_image_bytes + 2:
        raise ApiError(400, f"image larger than {cfg.max_image_bytes} bytes", "image_too_large", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"image is not valid base64: {exc}", "invalid_image", param) from exc
    if len(data) > cfg.max_image_bytes:
        raise ApiError(400, f"image larger than {cfg.max_image_bytes} bytes", "image_too_large", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in ALLOWED_FORMATS:
                    raise ApiError(
                        400,
                        f"image format {img.format} not allowed ({sorted(ALLOWED_FORMATS)})",
                        "invalid_image",
                        param,
                    )
                if img.width * img.height > cfg.max_image_pixels:
                    raise ApiError(
                        400,
                        f"image is {img.width}x{img.height} px, more than {cfg.max_image_pixels} pixels",
                        "image_too_large",
                        param,
                    )
                img.load()
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(400, f"image cannot be decoded: {type(exc).__name__}: {exc}", "invalid_image", param) from exc
    return data


def to_gen_request(req: ChatRequest, cfg: ServeConfig, rules: TextRules | None = None) -> GenRequest:
    """Validated request → engine request (images decoded and checked). Raises :class:`ApiError` 400.

    With ``rules``, all text is checked (character budget, Unicode, special tokens) before any image is decoded.
    """
    texts: list[tuple[str | None, str]] = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            texts.append((f"messages.{i}.content", m.content))
        else:
            for j, p in enumerate(m.content):
                param = f"messages.{i}.content.{j}"
                if p.type == "text":
                    if p.text is None:
                        raise ApiError(400, "text part without text", "invalid_request", param)
                    texts.append((f"{param}.text", p.text))
    if rules is not None:
        try:
            rules.check(texts)
        except RequestError as exc:
            raise ApiError(400, str(exc), exc.code, exc.param) from exc
    messages, n_images = [], 0
    for i, m in enumerate(req.messages):
        parts: list[tuple[str, Any]] = []
        if isinstance(m.content, str):
            parts.append(("text", m.content))
        else:
            for j, p in enumerate(m.content):
                param = f"messages.{i}.content.{j}"
                if p.type == "text":
                    parts.append(("text", p.text))
                    continue
                if p.image_url is None:
                    raise ApiError(400, "image_url part without image_url", "invalid_request", param)
                if m.role != "user":
                    raise ApiError(400, "images are accepted in user messages only", "invalid_request", param)
                n_images += 1
                if n_images > cfg.max_images_per_request:
                    raise ApiError(400, f"more than {cfg.max_images_per_request} images", "too_many_images", param)
                url = p.image_url if isinstance(p.image_url, str) else p.image_url.url
                parts.append(("image", decode_image_url(url, cfg, param)))
        messages.append({"role": m.role, "parts": parts})
    max_tokens = req.max_completion_tokens or req.max_tokens or cfg.default_max_tokens
    return GenRequest(messages, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed)


def completion(model: str, res: GenResult) -> dict:
    """An OpenAI ``chat.completion`` object for one result."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": res.text},
                "finish_reason": res.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens,
            "total_tokens": res.prompt_tokens + res.completion_tokens,
        },
    }


def model_list(names: list[str], langs: dict[str, str | None], base_name: str, created: int) -> dict:
    """``GET /v1/models`` body; each entry adds ``lang`` and ``adapter`` (false for the base model)."""
    return {
        "object": "list",
        "data": [
            {
                "id": n,
                "object": "model",
                "created": created,
                "owned_by": "mella",
                "adapter": n != base_name,
                "lang": langs.get(n),
            }
            for n in names
        ],
    }
