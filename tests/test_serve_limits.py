"""Bounded work per request on a model worker (issue 21, cases 1 and 2): stop strings are bounded and
matched at a per-token cost that does not grow with their number; images are bounded per request
(count and pixels, from the files' headers) and decoded only once the request holds a slot."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import resource
import threading
import time

import httpx
import pytest
from PIL import Image
from serving_helpers import (
    TINY_MODEL,
    ServerThread,
    build_zoo,
    data_url,
    image_b64,
    load_engine,
    make_worker,
    model_path,
    vicuna_prompt,
)

from mgm.errors import UserError
from mgm.inference.decoding import StopMatcher
from mgm.serve import limits as limits_mod
from mgm.serve.model_worker import create_app, parse_settings

pytestmark = pytest.mark.timeout(180)


# --- stop matching -----------------------------------------------------------------------------------
def _brute_pending(text: str, stops: list[str]) -> int:
    return max([n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])], default=0)


def test_stop_matcher_finds_what_a_search_of_the_whole_text_finds():
    rng = random.Random(0)
    for _ in range(3000):
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 14)))
        matcher, raw, at = StopMatcher(stops), "", 0
        while at < len(text):
            piece = text[at:at + rng.randint(1, 3)]
            at += len(piece)
            raw += piece
            cut = matcher.feed(piece)
            hits = [raw.find(s) for s in stops if s in raw]
            assert cut == (min(hits) if hits else None), (stops, raw)
            if hits:
                break
            assert matcher.pending == _brute_pending(raw, stops), (stops, raw)


def test_stop_matching_cost_per_token_does_not_grow_with_the_number_of_stops():
    def feed_time(stops: list[str]) -> float:
        matcher = StopMatcher(stops)
        t0 = time.perf_counter()
        for _ in range(20_000):
            matcher.feed("tok ")
        return time.perf_counter() - t0

    few = min(feed_time(["</s>"]) for _ in range(3))
    many = min(feed_time([f"st{i:06d}" for i in range(10_000)] + ["tok tok x"]) for _ in range(3))
    assert many < 3 * few + 0.05, f"10,000 stops: {many:.3f} s, one stop: {few:.3f} s"


# --- the worker --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_engine(model_path(build_zoo(tmp_path_factory)))


@pytest.fixture(scope="module")
def worker(loaded):
    """A worker with one slot and small per-request bounds, plus a test route that holds its slot."""
    engine, conv_mode = loaded
    w = make_worker(engine, conv_mode, limit_model_concurrency=1, max_stop_strings=4, max_stop_chars=16,
                    max_images=2, max_request_pixels=100 * 100 * 2)
    app = create_app(w)

    @app.post("/test_hold_slot")
    async def hold(seconds: float) -> dict:
        async with w.slot():
            await asyncio.sleep(seconds)
        return {}

    server = ServerThread(app, port=w.settings.port)
    yield w, server
    server.stop()


def chat(url: str, content, **extra) -> httpx.Response:
    body = {"model": TINY_MODEL, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, trust_env=False, timeout=60)


def image_parts(n: int, size=(60, 60)) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": data_url(size)}} for _ in range(n)] + \
        [{"type": "text", "text": "What is it?"}]


def test_stop_strings_are_bounded_on_both_protocols(worker):
    _, server = worker
    r = chat(server.url, "hi", stop=["x"] * 5)
    assert r.status_code == 400 and "--max-stop-strings" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "stop"
    r = chat(server.url, "hi", stop=["y" * 17])
    assert r.status_code == 400 and "--max-stop-chars" in r.json()["error"]["message"]
    assert chat(server.url, "hi", stop=["a", "b", "c", "d"]).status_code == 200
    r = httpx.post(server.url + "/worker_generate_stream", json={"prompt": vicuna_prompt("hi", 0), "stop": "z" * 17},
                   trust_env=False, timeout=30)
    assert r.status_code == 400 and "--max-stop-chars" in r.json()["text"]


def test_images_per_request_and_pixels_per_request_are_bounded(worker):
    _, server = worker
    r = chat(server.url, image_parts(3))
    assert r.status_code == 400 and "--max-images" in r.json()["error"]["message"]
    r = chat(server.url, image_parts(2, size=(100, 101)))  # each fits, together they do not
    assert r.status_code == 413 and "--max-request-pixels" in r.json()["error"]["message"]
    assert chat(server.url, image_parts(2)).status_code == 200
    original = {"prompt": vicuna_prompt("hi", 2), "images": [image_b64((100, 101))] * 2}
    r = httpx.post(server.url + "/worker_generate_stream", json=original, trust_env=False, timeout=30)
    assert r.status_code == 413 and "--max-request-pixels" in r.json()["text"]
    original = {"prompt": vicuna_prompt("hi", 3), "images": [image_b64()] * 3}
    r = httpx.post(server.url + "/worker_generate_stream", json=original, trust_env=False, timeout=30)
    assert r.status_code == 400 and "--max-images" in r.json()["text"]


def test_images_are_decoded_only_once_the_request_holds_a_slot(worker, monkeypatch):
    w, server = worker
    decoded: list[str] = []
    real_decode = limits_mod.PendingImage.decode

    def counting_decode(self, *args, **kwargs):
        decoded.append(self.what)
        return real_decode(self, *args, **kwargs)

    monkeypatch.setattr(limits_mod.PendingImage, "decode", counting_decode)
    holder = threading.Thread(target=lambda: httpx.post(server.url + "/test_hold_slot", params={"seconds": 2},
                                                        trust_env=False, timeout=30))
    holder.start()
    time.sleep(0.3)
    answers: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(chat(server.url, image_parts(1))))
    waiter.start()
    deadline = time.monotonic() + 5
    while w.queue_length < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.queue_length == 2, "the image request did not queue behind the held slot"
    assert decoded == []  # waiting for a slot, its image is still the encoded file
    holder.join()
    waiter.join()
    assert answers[0].status_code == 200 and len(decoded) == 1


def test_four_one_bit_bombs_are_refused_from_their_headers():
    """The issue's 42 KB request of four 1-bit 8192^2 PNGs (1.1 GB in the worker before): refused
    with the default bounds before any pixel is decoded."""
    buffer = io.BytesIO()
    Image.new("1", (8192, 8192)).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    policy = limits_mod.ImagePolicy()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    pending = [limits_mod.probe_base64_image(b64, policy, what=f"images[{i}]") for i in range(4)]
    with pytest.raises(limits_mod.ImageTooLargeError, match="--max-request-pixels"):
        limits_mod.check_pixels(pending, limits_mod.RequestLimits())
    assert time.monotonic() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: no decode happened


def test_limit_flags_parse_and_are_checked():
    s = parse_settings(["--model-path", "x", "--max-stop-strings", "3", "--max-stop-chars", "9", "--max-images", "1",
                        "--max-request-pixels", "1000", "--body-timeout", "4"])
    assert s.limits == limits_mod.RequestLimits(3, 9, 1, 1000) and s.body_timeout == 4
    with pytest.raises(UserError, match="--max-images"):
        parse_settings(["--model-path", "x", "--max-images", "0"])


def test_cutting_long_data_urls_out_before_parsing_gives_the_same_request():
    from mgm.serve.chat_body import MIN_CUT_BYTES, cut_data_urls, parse_chat_request
    from mgm.serve.openai_protocol import ChatCompletionRequest

    long_url = "data:image/png;base64," + "QUJD" * (MIN_CUT_BYTES // 2)
    escaped = "data:image/png;base64," + "QUJD" * (MIN_CUT_BYTES // 2) + "\\/"
    text_with_key = 'he said "url": "data:x" ' + "y" * MIN_CUT_BYTES
    body = {"model": "m", "metadata": {"url": long_url}, "stop": ["url"], "messages": [
        {"role": "system", "content": text_with_key},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": long_url}},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                     {"type": "image_url", "image_url": {"url": escaped, "detail": "high"}},
                                     {"type": "image_url", "image_url": long_url},
                                     {"type": "text", "text": "wörds"}]}]}
    for raw in (json.dumps(body).encode(), json.dumps(body, indent=2, ensure_ascii=False).encode(),
                json.dumps(body, separators=(",", ":")).encode().replace(b'"url":', b'"url"  :\n ')):
        small, values = cut_data_urls(raw)
        # the two long "url" values without escapes (metadata's and the first image's); not the escaped one,
        # the bare-string image_url, or the text that quotes a "url" key
        assert len(values) == 2 and len(small) < len(raw) - 2 * len(long_url) + 200
        assert parse_chat_request(raw).messages == ChatCompletionRequest.model_validate_json(raw).messages
    assert cut_data_urls(b'{"url": "data:' + b"A" * 10) == (b'{"url": "data:' + b"A" * 10, {})  # unterminated


def test_health_stays_quick_while_three_clients_send_20_mb_image_bodies(worker):
    """Case 6: bodies that must be parsed (a 20 MB data URL that is no image) keep the event loop free:
    their data URLs are cut out before the parse, large parses go one at a time, only the first 192 KB of
    the base64 are decoded, and each is refused with a 400."""
    w, _ = worker
    server = ServerThread(create_app(make_worker(w.engine, w.conv_mode)))
    noise = base64.b64encode(bytes(range(256)) * (15 * 1024 * 1024 // 256)).decode()
    body = json.dumps({"model": TINY_MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + noise}},
        {"type": "text", "text": "What is it?"}]}]}).encode()
    codes: list[int] = []

    def send() -> None:
        with httpx.Client(trust_env=False, timeout=60) as client:
            for _ in range(2):
                codes.append(client.post(server.url + "/v1/chat/completions", content=body,
                                         headers={"content-type": "application/json"}).status_code)

    try:
        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        worst = 0.0
        while any(sender.is_alive() for sender in senders):
            t0 = time.monotonic()
            assert httpx.get(server.url + "/health", trust_env=False, timeout=10).status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
        assert codes == [400] * 6
        # generous for a shared 2-core machine; a parse or a full decode on the event loop takes longer
        assert worst < 3.0, f"/health took {worst:.2f} s while 20 MB bodies were parsed"
    finally:
        server.stop()


def test_a_large_base64_image_is_probed_from_its_first_bytes_and_decoded_later():
    from serving_helpers import image_bytes

    padded = image_bytes((48, 40)) + b"\0" * (5 * 1024 * 1024)  # a PNG ends at IEND: the rest is ignored
    url = "data:image/png;base64," + base64.b64encode(padded).decode()
    policy = limits_mod.ImagePolicy()
    pending = limits_mod.probe_base64_image(url, policy)
    assert pending.size == (48, 40) and pending.data is url  # nothing decoded or copied yet
    assert pending.decode(policy).size == (48, 40)
    wrapped = base64.encodebytes(padded).decode()  # MIME line breaks every 76 characters
    assert limits_mod.probe_base64_image(wrapped, policy).size == (48, 40)
    noise = base64.b64encode(b"\1" * (5 * 1024 * 1024)).decode()
    with pytest.raises(limits_mod.ImageInputError, match="no image header"):
        limits_mod.probe_base64_image(noise, policy)
