"""Serving (issue 6): Ray Serve app with a tiny Qwen2-VL and 3 LoRA adapters, over real HTTP and the openai client.

Real components: the tiny random-weight Qwen2-VL of conftest_train (real Qwen tokenizer), LoRA
adapters saved by PEFT, a local Ray + Serve on 127.0.0.1 (free port), httpx and the official
``openai`` client. The LRU holds 2 adapters while 3 are used, so eviction and reloading are exercised.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
from pathlib import Path

import httpx
import openai
import pytest
from conftest import MINIWEB, needs_miniweb
from conftest_train import MAX_PIXELS, MIN_PIXELS, tiny_qwen2vl
from PIL import Image
from serve_helpers import data_url, make_adapters, serving

pytestmark = [needs_miniweb(), pytest.mark.slow]

TOKEN = "test-token-5f1c"
BASE = "tiny-qwen2-vl"
ADAPTERS = ["mella-hu", "mella-ko", "mella-ar"]
PROMPT = "Írja le ezt a képet."


def _image(lang: str) -> Path:
    import csv

    with open(MINIWEB / "PAIRS_expected.tsv", encoding="utf-8") as f:
        return MINIWEB / next(r["img"] for r in csv.DictReader(f, delimiter="\t") if r["lang"] == lang)


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("serve")
    model = tiny_qwen2vl(root / "tiny-qwen2-vl")
    make_adapters(model, root / "adapters", ADAPTERS)
    (root / "adapters" / "no-weights").mkdir()  # skipped: no adapter_config.json + safetensors
    (root / "adapters" / "no-weights" / "adapter_config.json").write_text("{}")
    args = dict(
        model=str(model),
        adapters=str(root / "adapters"),
        base_model_name=BASE,
        max_adapters_per_replica=2,
        image_min_pixels=MIN_PIXELS,
        image_max_pixels=MAX_PIXELS,
        max_image_bytes=300_000,
        max_image_pixels=1_000_000,
        max_tokens_limit=64,
        default_max_tokens=6,
        max_body_bytes=2_000_000,
        auth_token_env="MELLA_TEST_SERVE_TOKEN",
    )
    with serving(args, env={"MELLA_TEST_SERVE_TOKEN": TOKEN}) as url:
        yield {"url": url, "model": model, "root": root, "args": args}


def _body(model: str, image: str | None = None, text: str = PROMPT, **kw) -> dict:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **kw}


def _post(url: str, body, token: str | None = TOKEN, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return httpx.post(f"{url}/v1/chat/completions", content=raw, headers=headers, timeout=120)
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_models_lists_base_and_adapters(served):
    r = httpx.get(f"{served['url']}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    data = {m["id"]: m for m in r.json()["data"]}
    assert set(data) == {BASE, *ADAPTERS}  # "no-weights" was skipped
    assert data[BASE]["adapter"] is False and data["mella-ko"]["lang"] == "ko"


def test_each_adapter_matches_local_engine(served):
    """Served output per model == the engine run locally with that adapter (so the right LoRA is applied)."""
    from mella.serving.engine import VLMEngine
    from mella.serving.protocol import GenRequest

    img = _image("hu").read_bytes()
    engine = VLMEngine("qwen2-vl", served["model"], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    texts = {}
    for name in [BASE, *ADAPTERS]:
        r = _post(served["url"], _body(name, data_url(img)))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["model"] == name
        assert out["usage"]["completion_tokens"] <= 6 and out["usage"]["prompt_tokens"] > 16  # image tokens counted
        adapter = None if name == BASE else name
        if adapter:
            engine.load_adapter(name, served["root"] / "adapters" / name)
        req = GenRequest([{"role": "user", "parts": [("image", img), ("text", PROMPT)]}], max_tokens=6)
        expected = engine.generate([req], [adapter])[0]
        assert out["choices"][0]["message"]["content"] == expected.text
        texts[name] = expected.text
    assert len(set(texts.values())) == 4, texts  # every adapter changes the output


def test_openai_client(served):
    client = openai.OpenAI(base_url=f"{served['url']}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    assert {m.id for m in client.models.list()} == {BASE, *ADAPTERS}
    img = data_url(_image("ko"))
    resp = client.chat.completions.create(
        model="mella-ko",
        max_tokens=5,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": img}},
                    {"type": "text", "text": "이 사진을 설명해 주세요."},
                ],
            },
        ],
    )
    assert resp.choices[0].finish_reason in {"stop", "length"} and isinstance(resp.choices[0].message.content, str)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="mella-xx", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=BASE,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
        )
    bad = openai.OpenAI(base_url=f"{served['url']}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _noise_png(n: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (n, n), __import__("os").urandom(n * n * 3)).save(buf, "PNG")
    return buf.getvalue()


BAD = {
    "malformed_json": (None, b'{"model": "mella-hu", "messages": [', 400, "invalid_json"),
    "json_not_object": (None, b'["mella-hu"]', 400, "invalid_json"),
    "not_utf8": (None, b'\xff\xfe{"model"}', 400, "invalid_json"),
    "no_messages": ({"model": "mella-hu", "messages": []}, None, 400, "invalid_request"),
    "bad_role": ({"model": "mella-hu", "messages": [{"role": "root", "content": "x"}]}, None, 400, "invalid_request"),
    "bad_base64": (_body("mella-hu", "data:image/png;base64,@@@notbase64@@@"), None, 400, "invalid_image"),
    "not_an_image": (_body("mella-hu", data_url(b"hello, this is text, not a PNG")), None, 400, "invalid_image"),
    "truncated_png": (_body("mella-hu", data_url(_png(64, 64)[:60])), None, 400, "invalid_image"),
    "remote_url": (_body("mella-hu", "http://169.254.169.254/latest/meta-data.png"), None, 400, "remote_image_url"),
    "non_image_data_url": (_body("mella-hu", "data:text/plain;base64,aGVsbG8="), None, 400, "invalid_image"),
    "too_many_bytes": (_body("mella-hu", data_url(_noise_png(400))), None, 400, "image_too_large"),
    "too_many_pixels": (_body("mella-hu", data_url(_png(1100, 1000))), None, 400, "image_too_large"),
    "too_many_images": (
        {
            "model": "mella-hu",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(_png(32, 32))}}] * 5}
            ],
        },
        None,
        400,
        "too_many_images",
    ),
    "max_tokens_too_large": (_body("mella-hu", max_tokens=10_000), None, 400, "max_tokens_too_large"),
    "stream": (_body("mella-hu", stream=True), None, 400, "unsupported_parameter"),
    "n_2": (_body("mella-hu", n=2), None, 400, "unsupported_parameter"),
    "reserved_marker": (_body("mella-hu", text="hi <|image_pad|> there"), None, 400, "special_token"),
    "unknown_model": (_body("mella-xx"), None, 404, "model_not_found"),
    "path_as_model": (_body("../adapters/mella-hu"), None, 404, "model_not_found"),
    "absolute_path_model": (_body("/etc/passwd"), None, 404, "model_not_found"),
    "body_too_large": (None, b'{"model": "' + b"x" * 2_100_000 + b'"}', 413, "body_too_large"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request(served, case):
    body, raw, status, code = BAD[case]
    r = _post(served["url"], body, raw=raw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x"])
def test_auth_required(served, token):
    r = _post(served["url"], _body("mella-hu"), token=token)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert (
        httpx.get(
            f"{served['url']}/v1/models", headers={"Authorization": f"Bearer {token}"} if token else {}
        ).status_code
        == 401
    )


def test_concurrent_round_robin_and_still_up(served):
    """12 concurrent requests over 3 adapters (LRU of 2) all succeed with the sequential answers; server stays up."""
    img = data_url(_image("ar"))
    seq = {n: _post(served["url"], _body(n, img)).json()["choices"][0]["message"]["content"] for n in ADAPTERS}
    names = ADAPTERS * 4
    with cf.ThreadPoolExecutor(12) as pool:
        rs = list(pool.map(lambda n: _post(served["url"], _body(n, img)), names))
    assert [r.status_code for r in rs] == [200] * 12
    assert [r.json()["choices"][0]["message"]["content"] for r in rs] == [seq[n] for n in names]
    from ray import serve

    stats = serve.get_deployment_handle("VLMDeployment", "mella").stats.remote().result()
    assert stats["loads"] > len(ADAPTERS)  # evicted and reloaded (LRU of 2 < 3 adapters)
    assert len(stats["loaded"]) <= 2
    assert _post(served["url"], _body(BASE, img)).status_code == 200


def test_registry_never_maps_names_to_paths(tmp_path):
    from mella.serving.registry import discover

    (tmp_path / "mella-hu").mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "mella-hu" / f).write_text("{}")
    (tmp_path / "weird name").mkdir()
    reg = discover(tmp_path, "base")
    assert set(reg.adapters) == {"mella-hu"} and "weird name" in reg.skipped
    for name in ("../mella-hu", str(tmp_path / "mella-hu"), "mella-hu/", "base/../mella-hu"):
        assert name not in reg
    with pytest.raises(NotADirectoryError):
        discover(tmp_path / "missing", "base")
