"""Serving under hostile input (issue 16): one bad request never fails another; bounded work before validation.

Real components: the tiny random-weight Qwen2-VL of conftest_train (real Qwen tokenizer), one PEFT LoRA
adapter, a local Ray + Serve on 127.0.0.1 (one app for the module), httpx. Every case of the issue is a fixed
regression sent together with 7 valid requests (base model and adapter, with and without image, greedy and
sampled) that must all get 200 with the answers they get alone. The fuzz test draws requests with hypothesis:
``MELLA_FUZZ_EXAMPLES`` examples (default 25, derandomized so CI is stable; set it, e.g. 500, for a long
random run): every answer must be 2xx or 4xx with an OpenAI-shaped body, and a valid request sent at the
same moment must get 200.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest_train import MAX_PIXELS, MIN_PIXELS, QWEN_TOKENIZER, tiny_qwen2vl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import data_url, make_adapters, serving

TOKEN = "fuzz-token-8d2e"
BASE, ADAPTER = "tiny-qwen2-vl", "mella-hu"
MAX_TOKENS_LIMIT = 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ERROR_KEYS = {"message", "type", "param", "code"}


def _png(w: int, h: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model = tiny_qwen2vl(root / BASE)
    make_adapters(model, root / "adapters", [ADAPTER])
    return root


@pytest.fixture(scope="module")
def served(model_dir, ray_session):
    # header limits below the defaults: a 431 here also shows the gateway applied ServeConfig's values
    args = dict(
        model=str(model_dir / BASE),
        adapters=str(model_dir / "adapters"),
        base_model_name=BASE,
        image_min_pixels=MIN_PIXELS,
        image_max_pixels=MAX_PIXELS,
        max_tokens_limit=MAX_TOKENS_LIMIT,
        default_max_tokens=4,
        max_headers=60,
        max_header_bytes=8192,
        auth_token_env="MELLA_FUZZ_SERVE_TOKEN",
    )
    with serving(args, env={"MELLA_FUZZ_SERVE_TOKEN": TOKEN}, app_name="mella-fuzz") as url:
        client = httpx.Client(base_url=url, timeout=120, follow_redirects=False)
        refs = {i: _send(client, **_valid(i)) for i in range(7)}  # answers when sent alone
        assert all(r.status_code == 200 for r in refs.values()), [r.text for r in refs.values()]
        yield {
            "url": url,
            "client": client,
            "refs": {i: r.json()["choices"][0]["message"]["content"] for i, r in refs.items()},
        }
        client.close()


def _valid(i: int) -> dict:
    """Valid request ``i`` (0..6): base/adapter, image or not, greedy or sampled with a seed."""
    content = [{"type": "text", "text": f"Írja le a képet {i}."}]
    if i % 2 == 0:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(_png(40 + 8 * i, 48, (i * 30, 90, 10)))}})
    body = {
        "model": BASE if i % 3 == 0 else ADAPTER,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 3,
    }
    if i >= 5:
        body.update(temperature=0.7, top_p=0.9, seed=i)
    return {"json": body}


def _send(
    client: httpx.Client, method: str = "POST", path: str = "/v1/chat/completions", headers=None, **kw
) -> httpx.Response:
    return client.request(method, path, headers={**AUTH, **(headers or {})}, **kw)


def _assert_openai_error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, r.text[:300]
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), err
    assert err["code"] is None or isinstance(err["code"], str)
    return err


def _assert_completion(r: httpx.Response) -> str:
    out = r.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["finish_reason"] in {"stop", "length"}
    return out["choices"][0]["message"]["content"]


def _with_valid(served, bad: dict, n_valid: int = 7) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send ``bad`` and ``n_valid`` valid requests at the same moment (a barrier releases all threads at once)."""
    client = served["client"]
    barrier = threading.Barrier(n_valid + 1)

    def go(kw):
        barrier.wait(timeout=60)
        return _send(client, **kw)

    with ThreadPoolExecutor(n_valid + 1) as pool:
        futs = [pool.submit(go, bad)] + [pool.submit(go, _valid(i)) for i in range(n_valid)]
        rs = [f.result(timeout=300) for f in futs]
    return rs[0], rs[1:]


def _check_valid(served, valid: list[httpx.Response]) -> None:
    assert [r.status_code for r in valid] == [200] * len(valid), [r.text[:200] for r in valid if r.status_code != 200]
    for i, r in enumerate(valid):
        if i < 5:  # greedy: the same answer as alone
            assert _assert_completion(r) == served["refs"][i], i
        else:
            _assert_completion(r)


def _chat(content, **kw) -> dict:
    return {"json": {"model": ADAPTER, "messages": [{"role": "user", "content": content}], "max_tokens": 3, **kw}}


def _raw(body: bytes) -> dict:
    return {"content": body, "headers": {"Content-Type": "application/json"}}


def _deep(n: int, inner: str = "[]") -> bytes:
    return (
        b'{"model": "mella-hu", "messages": [{"role": "user", "content": "hi"}], "metadata": '
        + b"[" * n
        + inner.encode()
        + b"]" * n
        + b"}"
    )


# ------------------------------------------------------------------------------ units (no server)
def test_every_special_token_of_the_tokenizer_is_refused():
    """The refused set is read from the tokenizer: every special token, wherever it sits in the text."""
    from transformers import AutoTokenizer

    from mella.serving.protocol import RequestError, TextRules

    tok = AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    rules = TextRules.from_tokenizer(tok, 64)
    specials = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert {"<|endoftext|>", "<|vision_pad|>", "<|box_start|>", "<|image_pad|>", "<|im_start|>"} <= specials
    assert set(rules.specials) == specials
    for t in specials:
        with pytest.raises(RequestError) as e:
            rules.check([("messages.0.content", "ok"), ("messages.1.content", f"a{t}b")])
        assert e.value.code == "special_token" and e.value.param == "messages.1.content" and t in str(e.value)
    rules.check([(None, "<think> <tool_call> <|im_end"), (None, "plain text")])  # added but not special: allowed
    # a special token matched after the tokenizer's normalizer (NFC): decomposed é in user text still refused
    from tokenizers import AddedToken

    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<|caf\u00e9|>", normalized=True)]})
    rules = TextRules.from_tokenizer(tok, 64)
    with pytest.raises(RequestError, match="special token"):
        rules.check([(None, "x <|cafe\u0301|> y")])
    assert "<|caf\u00e9|>" in tok.convert_ids_to_tokens(tok("x <|cafe\u0301|> y")["input_ids"])  # why it matters


def test_character_budget_and_unicode_checked_before_tokenising():
    from transformers import AutoTokenizer

    from mella.serving.protocol import RequestError, TextRules

    tok = AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    rules = TextRules.from_tokenizer(tok, 8192)
    assert rules.max_chars == 8192 * max(len(t) for t in tok.get_vocab())  # 128 x 8192 for Qwen
    text = "szó " * 7_500_000
    t0 = time.monotonic()
    with pytest.raises(RequestError) as e:
        rules.check([(None, text)])
    assert e.value.code == "prompt_too_long" and time.monotonic() - t0 < 0.1
    # the budget is an upper bound: the longest run that fits in the tokens is far shorter than max_chars
    fits = "x" * 100
    assert len(tok(fits)["input_ids"]) * max(len(t) for t in tok.get_vocab()) >= len(fits)
    with pytest.raises(RequestError) as e:
        rules.check([(None, "ok"), ("messages.0.content", "a\ud800b")])
    assert e.value.code == "invalid_text" and e.value.param == "messages.0.content"


def test_sampling_ranges_match_torch():
    import torch

    from mella.serving.protocol import SEED_MAX, SEED_MIN, TEMPERATURE_MIN, GenRequest, RequestError, check_sampling

    for seed in (SEED_MIN, SEED_MAX, 0):
        torch.manual_seed(seed)  # the documented range is accepted ...
        check_sampling(GenRequest([], seed=seed, temperature=0.7))
    for seed in (SEED_MIN - 1, SEED_MAX + 1):
        with pytest.raises((RuntimeError, ValueError)):
            torch.manual_seed(seed)  # ... and one past it is what failed the batch before
        with pytest.raises(RequestError, match="seed"):
            check_sampling(GenRequest([], seed=seed, temperature=0.7))
    check_sampling(GenRequest([], temperature=TEMPERATURE_MIN, top_p=5e-324))
    bad = [
        dict(temperature=1e-300),
        dict(temperature=5e-324),
        dict(temperature=float("nan")),
        dict(temperature=2.01),
        dict(top_p=0.0),
        dict(top_p=float("inf")),
        dict(max_tokens=True),
        dict(max_tokens=0),
        dict(max_tokens=2.0),
        dict(seed=True, temperature=0.5),
        dict(temperature=True),
    ]
    for kw in bad:
        with pytest.raises(RequestError):
            check_sampling(GenRequest([], **kw))


def test_json_depth_and_numbers_bounded():
    from mella.serving.protocol import ApiError, parse_json

    assert parse_json(b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}")["a"]
    # the limit docs/serving.md states: 201 levels (the object + 200 arrays) parse, 202 do not
    assert parse_json(b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}")["a"]
    with pytest.raises(ApiError, match="recursion limit"):
        parse_json(b'{"a": ' + b"[" * 201 + b"]" * 201 + b"}")
    for body in (
        b"[" * 990 + b"]" * 990,
        _deep(100_000),
        b'{"a": ' + b"9" * 5000 + b"}",
        b'{"a": NaN}',
        b'{"a": "\\ud800"}',
        b'{"a": Infinity}',
    ):
        t0 = time.monotonic()
        with pytest.raises(ApiError) as e:
            parse_json(body)
        assert e.value.status == 400 and e.value.code == "invalid_json" and time.monotonic() - t0 < 0.5


def test_engine_isolates_a_failing_batch_member(model_dir):
    """Validation fails per request before batching; a member that still breaks the batched generate (an
    image whose features do not match its tokens, which validation cannot produce) fails alone: the batch is
    retried one by one and the others get the answers they get alone."""
    from mella.serving.engine import VLMEngine
    from mella.serving.protocol import GenerationFailed, GenRequest, GenResult, RequestError

    engine = VLMEngine("qwen2-vl", model_dir / BASE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)

    def req(text="Írja le.", img=None, **kw):
        return GenRequest(
            [{"role": "user", "parts": [("text", text)] + ([("image", img)] if img else [])}], max_tokens=3, **kw
        )

    out = engine.generate(
        [
            req(),
            req(img=_png(4096, 1)),
            req("\ud800"),
            req(seed=2**64, temperature=0.7),
            req(temperature=1e-300),
            req("<|box_start|>"),
            req(img=_png(64, 32)),
        ]
    )
    assert [type(o) for o in out] == [GenResult] + [RequestError] * 5 + [GenResult]
    assert [o.code for o in out[1:6]] == [
        "invalid_image",
        "invalid_text",
        "invalid_request",
        "invalid_request",
        "special_token",
    ]
    good = [engine.encode(req("a b c")), engine.encode(req(img=_png(64, 64)))]
    broken = engine.encode(req(img=_png(64, 64)))
    broken.features[0]["image_grid_thw"] = broken.features[0]["image_grid_thw"] * 2
    out = engine.generate_encoded([good[0], broken, good[1]])
    assert isinstance(out[1], GenerationFailed)
    alone = engine.generate_encoded([good[0]]) + engine.generate_encoded([good[1]])
    assert [o.text for o in (out[0], out[2])] == [o.text for o in alone]


# (request kwargs, expected status, expected error.code)
CASES = {
    # 1. they passed the gateway and failed the whole batch in the engine (500 for 8-12 of 21 valid requests)
    "png_4096x1": (_chat([{"type": "image_url", "image_url": {"url": data_url(_png(4096, 1))}}]), 400, "invalid_image"),
    "png_1x300": (_chat([{"type": "image_url", "image_url": {"url": data_url(_png(1, 300))}}]), 400, "invalid_image"),
    "lone_surrogate_escape": (
        _raw(b'{"model": "mella-hu", "messages": [{"role": "user", "content": "\\ud800 hi"}]}'),
        400,
        "invalid_json",
    ),
    "lone_surrogate_bytes": (
        _raw(
            '{"model": "mella-hu", "messages": [{"role": "user", "content": "\ud800 hi"}]}'.encode(
                "utf-8", "surrogatepass"
            )
        ),
        400,
        "invalid_json",
    ),
    "seed_2**64": (_chat("hi", seed=2**64, temperature=0.7), 400, "invalid_request"),
    "seed_-2**63-1": (_chat("hi", seed=-(2**63) - 1, temperature=0.7), 400, "invalid_request"),
    "temperature_1e-300": (_chat("hi", temperature=1e-300), 400, "invalid_request"),
    "temperature_5e-324": (_chat("hi", temperature=5e-324), 400, "invalid_request"),
    # 2. deep JSON nesting (RecursionError -> 500 before)
    "deep_array_990": (_raw(b"[" * 990 + b"]" * 990), 400, "invalid_json"),
    "deep_in_field_5000": (_raw(_deep(5000)), 400, "invalid_json"),
    "deep_objects_3000": (
        _raw(b'{"model": "mella-hu", "x": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001),
        400,
        "invalid_json",
    ),
    # 4. headers, routes, methods, media types, special tokens, booleans as numbers
    "header_100KB": ({**_chat("hi"), "headers": {"X-Big": "a" * 100_000}}, 431, "headers_too_large"),
    "header_1MB": ({**_chat("hi"), "headers": {"X-Big": "a" * 1_000_000}}, 431, "headers_too_large"),
    "headers_1000": ({**_chat("hi"), "headers": {f"X-H{i}": "v" for i in range(1000)}}, 431, "headers_too_large"),
    "header_9KB_over_config": ({**_chat("hi"), "headers": {"X-Big": "a" * 9000}}, 431, "headers_too_large"),
    "unknown_route": ({"method": "GET", "path": "/v1/nope"}, 404, "unknown_route"),
    "unknown_route_post": ({**_chat("hi"), "path": "/v2/chat/completions"}, 404, "unknown_route"),
    "get_on_chat": ({"method": "GET"}, 405, "method_not_allowed"),
    "delete_models": ({"method": "DELETE", "path": "/v1/models"}, 405, "method_not_allowed"),
    "text_plain_body": (
        {"content": json.dumps(_chat("hi")["json"]).encode(), "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    "form_body": ({"data": {"model": "mella-hu"}}, 415, "unsupported_media_type"),
    "endoftext": (_chat("a <|endoftext|> b"), 400, "special_token"),
    "vision_pad": (_chat([{"type": "text", "text": "<|vision_pad|>"}]), 400, "special_token"),
    "box_start_in_system": (
        {
            "json": {
                "model": BASE,
                "max_tokens": 3,
                "messages": [{"role": "system", "content": "x<|box_start|>"}, {"role": "user", "content": "hi"}],
            }
        },
        400,
        "special_token",
    ),
    "max_tokens_true": (_chat("hi", max_tokens=True), 400, "invalid_request"),
    "max_tokens_float": (_chat("hi", max_tokens=2.0), 400, "invalid_request"),
    "temperature_string": (_chat("hi", temperature="0.5"), 400, "invalid_request"),
    "nan_temperature": (
        _raw(b'{"model": "mella-hu", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        400,
        "invalid_json",
    ),
    "huge_integer": (
        _raw(
            b'{"model": "mella-hu", "messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 100_000 + b"}"
        ),
        400,
        "invalid_json",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_fails_alone(served, case):
    kw, status, code = CASES[case]
    bad, valid = _with_valid(served, kw)
    assert bad.status_code == status, bad.text[:300]
    assert _assert_openai_error(bad)["code"] == code
    _check_valid(served, valid)


@pytest.mark.slow
def test_trailing_slash_is_served_not_redirected(served):
    bad, valid = _with_valid(served, {**_valid(1), "path": "/v1/chat/completions/"})
    assert bad.status_code == 200, bad.text[:300]  # not 307
    assert _assert_completion(bad) == served["refs"][1]
    _check_valid(served, valid)
    r = _send(served["client"], "GET", "/v1/models/")
    assert r.status_code == 200 and {m["id"] for m in r.json()["data"]} == {BASE, ADAPTER}


@pytest.mark.slow
def test_unauthenticated_errors_are_openai_shaped(served):
    r = served["client"].post("/v1/chat/completions", json=_chat("hi")["json"])
    assert r.status_code == 401 and _assert_openai_error(r)["type"] == "authentication_error"
    r = served["client"].get("/nope")
    assert r.status_code == 404 and _assert_openai_error(r)["code"] == "unknown_route"


@pytest.mark.slow
def test_30mb_prompt_refused_fast_without_delaying_others(served):
    """A 30 MB prompt (under the 32 MiB body cap) is refused by the character budget in < 1 s; a valid request
    sent at the same moment takes at most 1 s longer than alone."""
    client = served["client"]
    big = json.dumps(_chat("word " * 6_000_000)["json"]).encode()
    assert 30_000_000 <= len(big) < 32 * 2**20
    assert _send(client, **_raw(big)).status_code == 400  # warm-up: first large body grows the proxy's buffers
    alone = []
    for _ in range(3):
        t0 = time.monotonic()
        assert _send(client, **_valid(1)).status_code == 200
        alone.append(time.monotonic() - t0)
    barrier = threading.Barrier(2)

    def timed(kw):
        barrier.wait(timeout=60)
        t0 = time.monotonic()
        r = _send(client, **kw)
        return r, time.monotonic() - t0

    with ThreadPoolExecutor(2) as pool:
        fb, fv = pool.submit(timed, _raw(big)), pool.submit(timed, _valid(1))
        (rb, tb), (rv, tv) = fb.result(timeout=300), fv.result(timeout=300)
    assert rb.status_code == 400 and _assert_openai_error(rb)["code"] == "prompt_too_long", rb.text[:300]
    print(f"30 MB prompt refused in {tb:.3f} s; valid request next to it {tv:.3f} s, alone {max(alone):.3f} s")
    assert tb < 1.0, f"30 MB prompt refused after {tb:.2f} s"
    assert rv.status_code == 200 and _assert_completion(rv) == served["refs"][1]
    assert tv <= max(alone) + 1.0, f"valid request took {tv:.2f} s next to the 30 MB one, {max(alone):.2f} s alone"


# ------------------------------------------------------------------------------------------------ fuzz
_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|image_pad|>",
    "<|vision_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|video_pad|>",
    "<think>",
    "<tool_call>",
]
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(_SPECIALS + ["\ud800 hi", "hi \udfff", "\x00", "é" * 50]),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), st.sampled_from(_SPECIALS), st.text(max_size=5)),
)
_sizes = st.one_of(
    st.tuples(st.integers(1, 300), st.integers(1, 300)),
    st.sampled_from([(4096, 1), (1, 300), (1, 201), (201, 1), (1, 199), (3, 3), (1, 1), (2000, 10)]),
)
_image_urls = st.one_of(
    st.builds(lambda wh: data_url(_png(*wh)), _sizes),
    st.builds(lambda wh: base64.b64encode(_png(*wh)).decode(), _sizes),
    st.builds(lambda b: data_url(b), st.binary(max_size=64)),
    st.builds(lambda wh, n: data_url(_png(*wh)[:n]), _sizes, st.integers(0, 80)),
    st.sampled_from(["http://127.0.0.1:1/x.png", "file:///etc/passwd", "data:text/plain;base64,aGk=", "", "@@@"]),
    st.text(max_size=20),
)
_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(st.fixed_dictionaries({"url": _image_urls}), _image_urls, _junk),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["text", "image_url", "video"]), _junk)},
        optional={"text": _junk, "image_url": _junk},
    ),
)
_messages = st.fixed_dictionaries(
    {
        "role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "root"]), _junk),
        "content": st.one_of(_texts, st.lists(_parts, max_size=3), _junk),
    }
)
_bodies = st.fixed_dictionaries(
    {
        "model": st.one_of(
            st.sampled_from([BASE, ADAPTER, ADAPTER, "mella-xx", "../adapters/mella-hu", "/etc/passwd"]), _junk
        )
    },
    optional={
        "messages": st.one_of(st.lists(_messages, max_size=3), _junk),
        "max_tokens": st.one_of(st.integers(-3, MAX_TOKENS_LIMIT + 3), st.booleans(), st.floats(0, 8), _junk),
        "max_completion_tokens": st.one_of(st.integers(-1, 6), _junk),
        "temperature": st.one_of(st.floats(0, 2.5), st.floats(0, 0.02), st.just(0), _junk),
        "top_p": st.one_of(st.floats(0, 1.2), st.just(5e-324), _junk),
        "seed": st.one_of(st.integers(-(2**65), 2**65), _junk),
        "n": st.one_of(st.integers(0, 3), _junk),
        "stream": st.one_of(st.booleans(), _junk),
        "metadata": st.recursive(
            _junk, lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=3), c, max_size=2)
        ),
    },
)


def _image(wh: tuple[int, int], fmt: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", wh, (wh[0] % 256, wh[1] % 256, 77)).save(buf, fmt)
    return data_url(buf.getvalue(), f"image/{fmt.lower()}")


# valid requests with random content: they reach the engine and the model (where the 500s of the issue were)
_ok_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60)
_ok_sizes = st.tuples(st.integers(1, 300), st.integers(1, 300)).filter(lambda wh: max(wh) / min(wh) <= 200)
_ok_images = st.builds(_image, _ok_sizes, st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]))
_ok_user = st.builds(
    lambda imgs, text: {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": u}} for u in imgs] + [{"type": "text", "text": text}],
    },
    st.lists(_ok_images, max_size=2),
    _ok_text,
) | st.builds(lambda t: {"role": "user", "content": t}, _ok_text)
_ok_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from([BASE, ADAPTER]),
        "messages": st.builds(
            lambda sys, turns: sys + turns,
            st.lists(st.builds(lambda t: {"role": "system", "content": t}, _ok_text), max_size=1),
            st.lists(_ok_user, min_size=1, max_size=2),
        ),
    },
    optional={
        "max_tokens": st.integers(1, MAX_TOKENS_LIMIT),
        "temperature": st.just(0) | st.floats(0.01, 2),
        "top_p": st.floats(0, 1, exclude_min=True),
        "seed": st.integers(-(2**63), 2**64 - 1),
    },
)
# one field of a valid request replaced by junk
_mutated = st.builds(
    lambda b, k, v: {**b, k: v},
    _ok_bodies,
    st.sampled_from(
        [
            "seed",
            "temperature",
            "top_p",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "stream",
            "messages",
            "model",
            "extra",
        ]
    ),
    _junk,
)


def _as_json(body: dict, ascii_only: bool = True) -> dict:
    """Request kwargs for a JSON body; NaN/Infinity kept (httpx refuses them), non-ASCII as escapes or UTF-8."""
    text = json.dumps(body, ensure_ascii=ascii_only)
    return _raw(text.encode("utf-8", "surrogatepass"))


_requests = st.one_of(  # about 4 in 9 reach the model (the first branches twice as likely)
    st.builds(_as_json, _ok_bodies, st.booleans()),
    st.builds(_as_json, _ok_bodies, st.booleans()),
    st.builds(_as_json, _mutated, st.booleans()),
    st.builds(_as_json, _mutated, st.booleans()),
    st.builds(_as_json, _bodies, st.booleans()),
    st.builds(lambda b: _as_json({**b, "max_tokens": 2}), _bodies),
    st.builds(lambda b: _raw(b), st.binary(max_size=200)),
    st.builds(
        lambda n, c: _raw(c.encode() * n + b"1" + (b"]" if c == "[" else b"}") * n),
        st.integers(1, 3000),
        st.sampled_from(["[", '{"a":']),
    ),
    st.builds(
        lambda b, n, size: {
            **_as_json(b),
            "headers": {"Content-Type": "application/json", **{f"X-F{i}": "v" * size for i in range(n)}},
        },
        st.fixed_dictionaries(
            {
                "model": st.sampled_from([BASE, ADAPTER]),
                "max_tokens": st.just(2),
                "messages": st.lists(_messages, min_size=1, max_size=2),
            }
        ),
        st.integers(0, 80),
        st.integers(1, 300),
    ),
)

FUZZ_EXAMPLES = int(os.environ.get("MELLA_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_tally():
    """Status codes the fuzzed requests got (printed with -s; shows the fuzz reaches the model, not only 400s)."""
    tally: Counter = Counter()
    yield tally
    print(f"\nfuzzed requests by status: {dict(sorted(tally.items()))}")


@pytest.mark.slow
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize="MELLA_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(kw=_requests)
def test_fuzz_no_5xx_and_valid_neighbour_succeeds(served, fuzz_tally, kw):
    bad, valid = _with_valid(served, kw, n_valid=1)
    assert bad.status_code < 500, (bad.status_code, bad.text[:500])
    if bad.status_code < 300:
        _assert_completion(bad)
        fuzz_tally[str(bad.status_code)] += 1
    else:
        assert 400 <= bad.status_code < 500
        fuzz_tally[f"{bad.status_code} {_assert_openai_error(bad)['code']}"] += 1
    assert valid[0].status_code == 200, valid[0].text[:300]


def test_client_leaving_mid_body_is_not_a_500(served):
    """A client that sends half its body and closes: answered 499 (nginx's "client closed request") in the access
    log, no 500 and no traceback in the Serve logs (proxy and replicas), and the server keeps serving.

    The gateway turns Starlette's ``ClientDisconnect`` into that quiet 499; a request the proxy cancels instead
    ends in ``CancelledError``, which is not an ``Exception`` and is left to Serve."""
    import glob
    import socket
    from urllib.parse import urlsplit

    import ray

    logs = os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve")
    before = {f: os.path.getsize(f) for f in glob.glob(os.path.join(logs, "*.log"))}

    def new_lines() -> str:
        text = ""
        for f in glob.glob(os.path.join(logs, "*.log")):
            with open(f, encoding="utf-8", errors="replace") as fh:
                fh.seek(before.get(f, 0))
                text += fh.read()
        return text

    u = urlsplit(served["url"])
    body = json.dumps(_valid(0)["json"]).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head + body[: len(body) // 2])
    deadline = time.monotonic() + 120
    while "POST /v1/chat/completions 499" not in new_lines() and time.monotonic() < deadline:
        time.sleep(0.5)  # the proxy's access-log line is the signal that the disconnect was handled
    r = _send(served["client"], **_valid(1))
    assert r.status_code == 200, r.text
    text = new_lines()
    assert "POST /v1/chat/completions 499" in text, text[-3000:]
    assert "Traceback" not in text and "chat completion failed" not in text and "unhandled error" not in text, text
    assert not re.search(r"POST /v1/chat/completions 5\d\d", text), text
