"""ServeConfig: the validated settings of the serving application (the ``args:`` of serve/config.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from mella.resources import Strict
from mella.serving.registry import NAME_RE


class ServeConfig(Strict):
    """Settings shared by the gateway and the model deployment. Units: bytes, pixels, tokens, seconds."""

    model: Path  # base model: a local HF checkpoint dir or a hub id org/name[@rev] (resolved by application())
    backbone: Literal["qwen2-vl", "internvl2"] = "qwen2-vl"
    base_model_name: str | None = Field(
        None, pattern=NAME_RE.pattern
    )  # model id meaning "no adapter"; default: dir or hub name
    adapters: Path | None = None  # directory listed once at start-up (mella.serving.registry)
    max_adapters_per_replica: int = Field(4, ge=1)  # @serve.multiplexed LRU size
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the replica has a GPU

    # request batching (@serve.batch)
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)

    # validation caps
    max_body_bytes: int = Field(32 * 2**20, ge=1024)  # whole HTTP body; larger -> 413
    max_headers: int = Field(100, ge=8)  # request headers; more -> 431 (Apache's LimitRequestFields default)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # names + values; larger -> 431 (h11's default buffer, 16 KiB)
    max_image_bytes: int = Field(10 * 2**20, ge=1)  # decoded bytes of one image; larger -> 400
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # width * height of one image; larger -> 400
    max_images_per_request: int = Field(4, ge=0)
    max_messages: int = Field(64, ge=1)
    max_tokens_limit: int = Field(1024, ge=1)  # upper bound for a request's max_tokens
    default_max_tokens: int = Field(256, ge=1)
    max_prompt_tokens: int = Field(8192, ge=16)  # image tokens included; text over this × the longest token -> 400

    # image budget of the model (as in training: mella.train.config)
    image_min_pixels: int = 4 * 28 * 28
    image_max_pixels: int = 1024 * 28 * 28
    max_tiles: int = 6

    # auth: when this environment variable is set and non-empty, requests need "Authorization: Bearer <value>"
    auth_token_env: str = "MELLA_SERVE_TOKEN"

    @property
    def base_name(self) -> str:
        """The model id of the base model (no adapter)."""
        return self.base_model_name or Path(self.model).name

    def auth_token(self) -> str | None:
        """The bearer token required by this process, or None when auth is off."""
        return os.environ.get(self.auth_token_env) or None
