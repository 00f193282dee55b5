"""The caches behind the model worker: a /v1 chat resending its history gets the same greedy answers with
the caches on as with them off, reuses the earlier turns' KV and the image's features, and the worker's
status reports the counters; the flags parse and refuse negative sizes."""
from __future__ import annotations

import json

import httpx
import pytest
from serving_helpers import (
    TINY_MODEL,
    build_zoo,
    data_url,
    image_b64,
    load_engine,
    make_worker,
    model_path,
    start_worker,
    vicuna_prompt,
)

from mgm.errors import UserError
from mgm.serve.worker_settings import parse_settings

pytestmark = pytest.mark.timeout(300)


def _chat(url: str, turns: int = 3, image: str | None = None) -> list[str]:
    """An OpenAI-style chat that resends the whole history (and the image) with every request."""
    messages: list[dict] = []
    answers = []
    questions = ["What is in the image?", "Tell me more.", "Which colour is it?"]
    for turn in range(turns):
        content: list[dict] = [{"type": "text", "text": questions[turn]}]
        if turn == 0:
            content.append({"type": "image_url", "image_url": {"url": image or data_url()}})
        messages.append({"role": "user", "content": content})
        r = httpx.post(url + "/v1/chat/completions", json={"model": TINY_MODEL, "messages": messages,
                                                             "temperature": 0, "max_tokens": 12},
                       trust_env=False, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": answer})
        answers.append(answer)
    return answers


def _original(url: str) -> str:
    """One request of the original protocol (what the web demo sends), its final text."""
    payload = {"prompt": vicuna_prompt("What is in the image?"), "images": [image_b64()], "temperature": 0,
               "max_new_tokens": 8, "stop": "</s>"}
    with httpx.stream("POST", url + "/worker_generate_stream", json=payload, trust_env=False, timeout=120) as r:
        chunks = [json.loads(c) for c in r.read().split(b"\0") if c]
    assert chunks and chunks[-1]["error_code"] == 0
    return chunks[-1]["text"]


def _status(url: str) -> dict:
    return httpx.post(url + "/worker_get_status", trust_env=False).json()


def test_v1_chat_with_history_resent_is_identical_and_hits_the_caches(tmp_path_factory):
    path = model_path(build_zoo(tmp_path_factory))
    answers = {}
    for label, flags in (("off", dict(no_prefix_cache=True, image_cache_mb=0)), ("on", {})):
        engine, conv_mode = load_engine(path)
        worker = make_worker(engine, conv_mode, **flags)
        server = start_worker(worker)
        try:
            answers[label] = _chat(server.url)
            status = _status(server.url)
            answers[label + " original"] = [_original(server.url) for _ in range(2)]
            after_original = _status(server.url)
        finally:
            server.stop()
        if label == "off":
            assert engine.caches is None and status["caches"] is None
    assert answers["on"] == answers["off"] and answers["on original"] == answers["off original"]
    # the original protocol (the web demo's) shares them: its first request met the /v1 chat's image
    # features and prefix, the second its own whole prompt
    after = after_original["caches"]
    assert after["prefix_kv"]["hits"] == 4 and after["image_features"]["misses"] == 1
    caches = status["caches"]
    assert caches["prefix_kv"]["hits"] == 2 and caches["prefix_kv"]["misses"] == 1
    assert caches["prefix_kv"]["reused_tokens"] > 2 * engine.num_image_tokens()
    assert 0 < caches["prefix_kv"]["bytes"] <= caches["prefix_kv"]["max_bytes"] == 1024 << 20
    assert caches["image_features"]["misses"] == 1 and caches["image_features"]["max_bytes"] == 256 << 20


def test_cache_flags():
    s = parse_settings(["--model-path", "p"])
    assert s.cache_bytes == (256 << 20, 1024 << 20)
    s = parse_settings(["--model-path", "p", "--no-prefix-cache", "--image-cache-mb", "8"])
    assert s.cache_bytes == (8 << 20, 0)
    assert parse_settings(["--model-path", "p", "--prefix-cache-mb", "0"]).cache_bytes[1] == 0
    with pytest.raises(UserError, match="--image-cache-mb must be >= 0"):
        parse_settings(["--model-path", "p", "--image-cache-mb", "-1"])
