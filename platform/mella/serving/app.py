"""Ray Serve application: an OpenAI-compatible gateway in front of a multiplexed LoRA model deployment.

Two deployments (Ray Serve's model-composition pattern):

* ``Gateway`` (FastAPI ingress, CPU only): bearer-token auth, body cap, JSON / request / image
  validation (mella.serving.protocol), model-name lookup in the registry (404 for unknown names), and
  ``GET /v1/models``. It calls the model deployment through a handle with
  ``.options(multiplexed_model_id=name)`` so Serve routes a request to a replica that already holds
  that adapter when there is one (no id for the base model).
* ``VLMDeployment``: the base model loaded once per replica (:class:`mella.serving.engine.VLMEngine`);
  adapters loaded on demand by a ``@serve.multiplexed`` loader (LRU, ``max_adapters_per_replica``;
  eviction deletes the adapter from the model); requests gathered by ``@serve.batch`` and generated as
  one PEFT mixed-adapter batch. Per-request problems come back as values (``RequestError``), so one
  bad request never fails its batch-mates.

``build_app(args)`` is the application builder named by serve/config.yaml (``args`` = ServeConfig);
``application(cfg, runtime_env)`` is the same for Python callers (tests, notebooks).
"""


import asyncio
import hmac
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from mella.serving import protocol
from mella.serving.config import ServeConfig
from mella.serving.protocol import ApiError, GenRequest, GenResult, RequestError
from mella.serving.registry import discover

log = logging.getLogger("ray.serve")
api = FastAPI(title="MELLA", docs_url=None, redoc_url=None, openapi_url=None)


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
        self.engine = VLMEngine(cfg.backbone, cfg.model, device=device, min_pixels=cfg.image_min_pixels,
                                max_pixels=cfg.image_max_pixels, max_tiles=cfg.max_tiles,
                                max_prompt_tokens=cfg.max_prompt_tokens)
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

    async def chat(self, req: GenRequest) -> GenResult | RequestError:
        name = serve.get_multiplexed_model_id() or None
        if name is not None:
            if name not in self.registry.adapters:
                return RequestError(f"unknown adapter {name!r}")
            await self.get_adapter(name)
        return await self._generate_batch((req, name))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, items: list[tuple[GenRequest, str | None]]) -> list[GenResult | RequestError]:
        paths = {a.name: a.path for a in self.registry.adapters.values()}
        reqs, names = [r for r, _ in items], [n for _, n in items]
        return await asyncio.to_thread(self.engine.generate, reqs, names, paths)

    def stats(self) -> dict:
        """Adapter loads by the LRU loader, temporary loads, adapters loaded now, peak RSS of the replica (MiB)."""
        import resource

        return {"loads": self.loads, "temporary_loads": self.engine.temporary_loads, "loaded": sorted(self.engine.loaded),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Gateway:
    """OpenAI-compatible HTTP front: validation, auth, routing by ``model``."""

    def __init__(self, model, args: dict):
        self.model = model
        self.cfg = ServeConfig(**args)
        self.registry = discover(self.cfg.adapters, self.cfg.base_name)
        self.token = self.cfg.auth_token()
        self.created = int(time.time())
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

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._auth(request)
        except ApiError as exc:
            return _error(exc)
        langs = {a.name: a.lang for a in self.registry.adapters.values()}
        return protocol.model_list(self.registry.names(), langs, self.registry.base_name, self.created)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            self._auth(request)
            data = protocol.parse_json(await self._body(request))
            req = protocol.parse_request(data, self.cfg)
            if req.model not in self.registry:
                raise ApiError(404, f"model {req.model!r} does not exist; GET /v1/models lists the available ones",
                               "model_not_found", "model", type_="not_found_error")
            gen = await asyncio.to_thread(protocol.to_gen_request, req, self.cfg)
            handle = self.model if req.model == self.registry.base_name else self.model.options(
                multiplexed_model_id=req.model)
            res = await handle.chat.remote(gen)
        except ApiError as exc:
            return _error(exc)
        except Exception:  # noqa: BLE001 - the server answers 500 and stays up; details go to the log
            log.exception("chat completion failed")
            return _error(ApiError(500, "internal error while generating", "internal_error", type_="server_error"))
        if isinstance(res, RequestError):
            return _error(ApiError(400, str(res), "invalid_request"))
        return protocol.completion(req.model, res)


def application(args: dict | ServeConfig, runtime_env: dict | None = None) -> serve.Application:
    """The bound application (gateway → model deployment) for ``serve.run``.

    ``runtime_env`` (optional) is given to both deployments' actors, e.g. ``{"env_vars": {...}}`` to
    hand the auth token to the gateway from Python. Raises pydantic ``ValidationError`` for bad
    settings and ``NotADirectoryError`` for a missing adapter directory (before any replica starts).
    """
    cfg = args if isinstance(args, ServeConfig) else ServeConfig(**args)
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
