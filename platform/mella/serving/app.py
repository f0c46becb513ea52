"""Ray Serve application: an OpenAI-compatible gateway in front of a multiplexed LoRA model deployment.

Two deployments (Ray Serve's model-composition pattern):

* ``Gateway`` (FastAPI ingress, CPU only): bearer-token auth, body cap, JSON / request / image
  validation (mella.serving.protocol), model-name lookup in the registry (404 for unknown names), and
  ``GET /v1/models``. It calls the model deployment through a handle with
  ``.options(multiplexed_model_id=name)`` so Serve routes a request to a replica that already holds
  that adapter when there is one (no id for the base model).
* ``VLMDeployment``: the base model loaded once per replica (:class:`mella.serving.engine.VLMEngine`);
  adapters loaded on demand by a ``@serve.multiplexed`` loader (LRU, ``max_adapters_per_replica``;
  eviction deletes the adapter from the model); each request is validated and encoded on its own
  (``VLMEngine.encode``) before it joins a ``@serve.batch``, which is generated as one PEFT mixed-adapter
  batch (retried one by one if it raises). Per-request problems come back as values (``RequestError`` → 400,
  ``GenerationFailed`` → 500), so one bad request never fails its batch-mates.

Every error body is OpenAI's ``{"error": {"message", "type", "param", "code"}}``, also for unknown routes (404),
wrong methods (405), wrong Content-Type (415) and oversized headers (431); no trailing-slash redirects.

``build_app(args)`` is the application builder named by serve/config.yaml (``args`` = ServeConfig);
``application(cfg, runtime_env)`` is the same for Python callers (tests, notebooks).
"""

import asyncio
import hmac
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mella.models.hub import resolve_model
from mella.serving import protocol
from mella.serving.config import ServeConfig
from mella.serving.protocol import ApiError, GenerationFailed, GenRequest, GenResult, RequestError
from mella.serving.registry import discover

log = logging.getLogger("ray.serve")
# redirect_slashes=False: no 307 to the slash-less path (routes are registered both ways instead)
api = FastAPI(title="MELLA", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)


class HeaderLimits:
    """ASGI middleware: 431 when a request has more than ``count`` headers or more than ``bytes`` of header names
    + values (RFC 6585 section 5). Ray Serve 2.60 exposes no uvicorn/h11 header settings (``HTTPOptions``
    has none; its ``middlewares`` are deprecated in favour of the ingress app's own), and uvicorn's httptools
    parser has no size limit, so the ingress app enforces them before any route runs.

    The limits are class attributes set by the gateway from ServeConfig (:meth:`configure`): Serve freezes a
    copy of ``api`` and pickles the gateway class by value, so neither ``api.state`` nor a module global set
    from ``Gateway.__init__`` would reach the middleware; this class is pickled by reference.
    """

    count, bytes = 100, 16 * 1024

    def __init__(self, app):
        self.app = app

    @classmethod
    def configure(cls, count: int, size: int) -> None:
        cls.count, cls.bytes = count, size

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            size = sum(len(k) + len(v) for k, v in headers)
            if len(headers) > self.count or size > self.bytes:
                exc = ApiError(
                    431,
                    f"request has {len(headers)} headers of {size} bytes; at most {self.count} "
                    f"headers of {self.bytes} bytes are accepted",
                    "headers_too_large",
                )
                await _error(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(HeaderLimits)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    """Routing errors (unknown route 404, wrong method 405) in OpenAI's error shape instead of FastAPI's ``detail``."""
    codes = {404: ("unknown_route", "not_found_error"), 405: ("method_not_allowed", "invalid_request_error")}
    code, type_ = codes.get(exc.status_code, ("http_error", "invalid_request_error"))
    path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
    message = f"{request.method} {path}: {exc.detail}"
    resp = _error(ApiError(exc.status_code, message, code, type_=type_))
    for k, v in (exc.headers or {}).items():  # e.g. Allow on 405
        resp.headers[k] = v
    return resp


@api.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception):
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(ApiError(500, "internal server error", "internal_error", type_="server_error"))


class LoadedAdapter:
    """What the multiplexed loader returns; Serve's LRU eviction calls ``__del__``, which deletes the adapter.

    Serve calls ``__del__`` explicitly and Python calls it again at garbage collection, possibly after
    the same name was loaded anew: only the first call acts.
    """

    def __init__(self, engine, name: str):
        self.engine, self.name, self._live = engine, name, True

    def __del__(self):
        if getattr(self, "_live", False):
            self._live = False
            self.engine.unload_adapter(self.name)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class VLMDeployment:
    """Base model + multiplexed LoRA adapters; ``chat(GenRequest)`` → ``GenResult | RequestError``."""

    def __init__(self, args: dict):
        import torch

        from mella.serving.engine import VLMEngine

        cfg = ServeConfig(**args)
        self.cfg = cfg
        self.registry = discover(cfg.adapters, cfg.base_name)
        device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.engine = VLMEngine(
            cfg.backbone,
            cfg.model,
            device=device,
            min_pixels=cfg.image_min_pixels,
            max_pixels=cfg.image_max_pixels,
            max_tiles=cfg.max_tiles,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )

        # LRU size comes from the config, so the multiplexed loader is wired at init (Serve detects it there).
        # (a plain function: Serve keeps its LRU state as an attribute of the decorated callable).
        async def load(name: str) -> LoadedAdapter:
            return await self._load(name)

        self.get_adapter = serve.multiplexed(max_num_models_per_replica=cfg.max_adapters_per_replica)(load)
        self._generate_batch.set_max_batch_size(cfg.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.loads = 0

    async def _load(self, name: str) -> LoadedAdapter:
        adapter = self.registry.adapters[name]  # names were checked by the gateway; KeyError otherwise
        await asyncio.to_thread(self.engine.load_adapter, name, adapter.path)
        self.loads += 1
        return LoadedAdapter(self.engine, name)

    async def chat(self, req: GenRequest) -> GenResult | RequestError | GenerationFailed:
        """Validate and encode ``req`` on its own (in a thread), then join a batch: a request that fails
        validation never reaches the batch, so it cannot fail its batch-mates."""
        name = serve.get_multiplexed_model_id() or None
        if name is not None and name not in self.registry.adapters:
            return RequestError(f"unknown adapter {name!r}", "model_not_found", "model")
        try:
            encoded = await asyncio.to_thread(self.engine.encode, req)
        except RequestError as exc:
            return exc
        if name is not None:
            await self.get_adapter(name)
        return await self._generate_batch((encoded, name))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, items: list[tuple]) -> list[GenResult | GenerationFailed]:
        paths = {a.name: a.path for a in self.registry.adapters.values()}
        encoded, names = [e for e, _ in items], [n for _, n in items]
        return await asyncio.to_thread(self.engine.generate_encoded, encoded, names, paths)

    def stats(self) -> dict:
        """Adapter loads by the LRU loader, temporary loads, adapters loaded now, peak RSS of the replica (MiB)."""
        import resource

        return {
            "loads": self.loads,
            "temporary_loads": self.engine.temporary_loads,
            "loaded": sorted(self.engine.loaded),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _is_json(content_type: str | None) -> bool:
    """No Content-Type, ``application/json`` or any ``+json`` type (parameters such as charset ignored)."""
    if not content_type:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Gateway:
    """OpenAI-compatible HTTP front: validation, auth, routing by ``model``.

    Order of checks, cheapest first: header count/size (431, middleware), bearer token (401), Content-Type (415),
    body size (413, while streaming), JSON with bounded nesting (400), schema (400), model name (404), text
    (character budget before any tokenising, Unicode, special tokens of the tokenizer; 400), images (400).
    """

    def __init__(self, model, args: dict):
        self.model = model
        self.cfg = ServeConfig(**args)
        self.registry = discover(self.cfg.adapters, self.cfg.base_name)
        self.token = self.cfg.auth_token()
        self.created = int(time.time())
        self.rules = protocol.TextRules.from_pretrained(str(self.cfg.model), self.cfg.max_prompt_tokens)
        HeaderLimits.configure(self.cfg.max_headers, self.cfg.max_header_bytes)
        for name, reason in self.registry.skipped.items():
            log.warning("adapter directory %r skipped: %s", name, reason)

    def _auth(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ApiError(401, "missing or invalid bearer token", "invalid_api_key", type_="authentication_error")

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_body_bytes:
            raise ApiError(413, f"request body larger than {self.cfg.max_body_bytes} bytes", "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.cfg.max_body_bytes:
                raise ApiError(413, f"request body larger than {self.cfg.max_body_bytes} bytes", "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _validate(self, body: bytes) -> tuple[protocol.ChatRequest, GenRequest]:
        req = protocol.parse_request(protocol.parse_json(body), self.cfg)
        if req.model not in self.registry:
            raise ApiError(
                404,
                f"model {req.model!r} does not exist; GET /v1/models lists the available ones",
                "model_not_found",
                "model",
                type_="not_found_error",
            )
        return req, protocol.to_gen_request(req, self.cfg, self.rules)

    @api.get("/v1/models")
    @api.get("/v1/models/", include_in_schema=False)
    async def models(self, request: Request):
        try:
            self._auth(request)
        except ApiError as exc:
            return _error(exc)
        langs = {a.name: a.lang for a in self.registry.adapters.values()}
        return protocol.model_list(self.registry.names(), langs, self.registry.base_name, self.created)

    @api.post("/v1/chat/completions")
    @api.post("/v1/chat/completions/", include_in_schema=False)
    async def chat(self, request: Request):
        try:
            self._auth(request)
            if not _is_json(request.headers.get("content-type")):
                raise ApiError(
                    415,
                    f"Content-Type {request.headers['content-type']!r} is not supported; send application/json",
                    "unsupported_media_type",
                )
            body = await self._body(request)
            req, gen = await asyncio.to_thread(self._validate, body)  # parsing a 30 MB body stays off the loop
            handle = (
                self.model
                if req.model == self.registry.base_name
                else self.model.options(multiplexed_model_id=req.model)
            )
            res = await handle.chat.remote(gen)
        except ApiError as exc:
            return _error(exc)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing went wrong here
            log.info("client closed the connection before sending its whole request body; not answered")
            return Response(status_code=499)  # "client closed request" (nginx's code), for the access log only
        except Exception:
            log.exception("chat completion failed")
            return _error(ApiError(500, "internal error while generating", "internal_error", type_="server_error"))
        if isinstance(res, RequestError):
            return _error(ApiError(400, str(res), res.code, res.param))
        if isinstance(res, GenerationFailed):
            log.error("generation failed for one request: %s", res.message)
            return _error(ApiError(500, "internal error while generating", "internal_error", type_="server_error"))
        return protocol.completion(req.model, res)


def resolved(cfg: ServeConfig) -> ServeConfig:
    """``cfg`` with ``model`` resolved to a local directory (a hub id through the HF cache, mella.models.hub: the
    replicas get the snapshot directory; on a cluster the cache must be shared) and ``base_model_name`` fixed to
    the name the user gave (``Qwen2-VL-7B-Instruct`` for ``Qwen/Qwen2-VL-7B-Instruct``, not the snapshot hash).

    Raises :class:`mella.console.UsageError` (one line) for a model that is neither a directory nor a cached id.
    """
    name = cfg.base_model_name or str(cfg.model).split("@")[0].rstrip("/").rsplit("/", 1)[-1]
    return cfg.model_copy(update={"base_model_name": name, "model": resolve_model(str(cfg.model), flag="model")})


def application(args: dict | ServeConfig, runtime_env: dict | None = None) -> serve.Application:
    """The bound application (gateway → model deployment) for ``serve.run``.

    ``runtime_env`` (optional) is given to both deployments' actors, e.g. ``{"env_vars": {...}}`` to
    hand the auth token to the gateway from Python. Raises pydantic ``ValidationError`` for bad
    settings, ``NotADirectoryError`` for a missing adapter directory and :class:`mella.console.UsageError` for a
    model that is neither a directory nor a hub id in the Hugging Face cache (before any replica starts).
    """
    cfg = resolved(args if isinstance(args, ServeConfig) else ServeConfig(**args))
    discover(cfg.adapters, cfg.base_name)
    plain = cfg.model_dump(mode="json")
    model, gateway = VLMDeployment, Gateway
    if runtime_env:
        model = model.options(ray_actor_options={"num_cpus": 1, "runtime_env": runtime_env})
        gateway = gateway.options(ray_actor_options={"num_cpus": 0.25, "runtime_env": runtime_env})
    return gateway.bind(model.bind(plain), plain)


def build_app(args: dict) -> serve.Application:
    """Application builder for ``serve run serve/config.yaml`` (``args:`` = :class:`ServeConfig` fields)."""
    return application(args)
