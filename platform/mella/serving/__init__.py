"""Serving per-language LoRA adapters of one MLLM backbone (Ray Serve, OpenAI-compatible API).

``config``: ServeConfig (settings); ``registry``: adapter discovery (model name → adapter directory, listed once).
``protocol``: request validation (JSON, images, caps) and OpenAI response objects; no torch.
``engine``: the base model + PEFT adapters and batched generation (used by Serve and by Ray Data).
``app``: the Ray Serve application (gateway + multiplexed model deployment).
"""
