"""Helpers for the serving/evaluation tests and benchmark (not a pytest conftest).

Tiny LoRA adapters are made with PEFT on the tiny random-weight Qwen2-VL of ``conftest_train``
(real Qwen tokenizer); ``init_lora_weights=False`` gives non-zero B matrices, so each adapter really
changes the model's output and a mix-up between adapters is visible.
"""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

from ports import free_port

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def make_adapters(base: Path, root: Path, names: list[str], rank: int = 4) -> dict[str, Path]:
    """Save one random LoRA adapter (PEFT format) per name under ``root/NAME``; returns name → dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    out = {}
    for i, name in enumerate(names):
        model = Qwen2VLForConditionalGeneration.from_pretrained(base)
        torch.manual_seed(1000 + i)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False)
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():  # scale B up so that each adapter moves greedy decoding visibly
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(20.0)
        peft_model.save_pretrained(root / name)
        out[name] = root / name
    return out


def data_url(path: Path | bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` of a file (or bytes)."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@contextlib.contextmanager
def serving(args: dict, env: dict | None = None, app_name: str = "mella"):
    """Run the MELLA Serve application on 127.0.0.1 (a free port) in the current Ray; yield its base URL.

    ``env``: environment variables for the replicas (e.g. the auth token). Serve is shut down after.
    """
    from ray import serve

    from mella.serving.app import application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(args, runtime_env={"env_vars": env} if env else None), name=app_name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
