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
Deviations from OpenAI: ``temperature`` defaults to 0 (greedy, reproducible evaluation); ``n`` must be
1 and ``stream`` false.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mella.serving.config import ServeConfig

class RequestError(ValueError):
    """A request that cannot be served as sent (HTTP 400): too long, reserved markers, bad image."""


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
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)


class ApiError(Exception):
    """An HTTP error in OpenAI's shape. ``status``: HTTP code; ``code``: machine-readable reason."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
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


class ChatRequest(BaseModel):
    """The subset of the OpenAI chat-completions body we serve; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    n: int = 1
    stream: bool = False


def parse_json(body: bytes) -> dict:
    """Body bytes → JSON object. Raises :class:`ApiError` 400 ``invalid_json``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
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
        raise ApiError(400, f"max_tokens {max_tokens} exceeds the limit {cfg.max_tokens_limit}", "max_tokens_too_large",
                       "max_tokens")
    return req


def decode_image_url(url: str, cfg: ServeConfig, param: str) -> bytes:
    """A data URL or bare base64 → validated image file bytes. Raises :class:`ApiError` 400.

    Checks in order: scheme (no remote URLs), encoded length against ``max_image_bytes`` (before
    decoding), strict base64, decoded size, Pillow format (``ALLOWED_FORMATS``), width × height against
    ``max_image_pixels`` (from the header), then a full decode with decompression-bomb warnings as errors.
    """
    url = url.strip()
    if url.startswith(("http://", "https://", "file:", "ftp:")):
        raise ApiError(400, "remote image URLs are not fetched; send the image inline as a data: URL or base64",
                       "remote_image_url", param)
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
                    raise ApiError(400, f"image format {img.format} not allowed ({sorted(ALLOWED_FORMATS)})",
                                   "invalid_image", param)
                if img.width * img.height > cfg.max_image_pixels:
                    raise ApiError(400, f"image is {img.width}x{img.height} px, more than {cfg.max_image_pixels} pixels",
                                   "image_too_large", param)
                img.load()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types (UnidentifiedImageError, OSError, bomb ...)
        raise ApiError(400, f"image cannot be decoded: {type(exc).__name__}: {exc}", "invalid_image", param) from exc
    return data


def to_gen_request(req: ChatRequest, cfg: ServeConfig) -> GenRequest:
    """Validated request → engine request (images decoded and checked). Raises :class:`ApiError` 400."""
    messages, n_images = [], 0
    for i, m in enumerate(req.messages):
        parts: list[tuple[str, Any]] = []
        if isinstance(m.content, str):
            parts.append(("text", m.content))
        else:
            for j, p in enumerate(m.content):
                param = f"messages.{i}.content.{j}"
                if p.type == "text":
                    if p.text is None:
                        raise ApiError(400, "text part without text", "invalid_request", param)
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
        "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                     "finish_reason": res.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                  "total_tokens": res.prompt_tokens + res.completion_tokens},
    }


def model_list(names: list[str], langs: dict[str, str | None], base_name: str, created: int) -> dict:
    """``GET /v1/models`` body; each entry adds ``lang`` and ``adapter`` (false for the base model)."""
    return {"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": "mella", "adapter": n != base_name,
         "lang": langs.get(n)} for n in names]}
