"""Model worker end to end on the tiny model: controller + worker as real uvicorn servers on 127.0.0.1,
the original NUL-delimited protocol, OCR/GEN placement, the token budget, bad input, a client that
disconnects, 32 concurrent streams, and a worker process killed mid-request."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serving_helpers import (
    TINY_MODEL,
    ServerThread,
    build_zoo,
    free_port,
    image_b64,
    load_engine,
    make_worker,
    model_path,
    start_worker,
    vicuna_prompt,
)

from mgm.conversation import conv_templates
from mgm.errors import UserError
from mgm.inference import batcher as batcher_mod
from mgm.serve.controller import ControllerSettings, create_app as controller_app
from mgm.serve.engine import GenerationParams, Request
from mgm.serve.model_worker import add_content, assistant_tail, parse_settings
from mgm.serve.protocol import ERROR_BAD_REQUEST, EXCEEDS_MAX_TOKENS_MSG, iter_chunks

pytestmark = pytest.mark.timeout(120)


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(zoo):
    return load_engine(model_path(zoo))


@pytest.fixture(scope="module")
def controller():
    # short heart-beat window so the dead-worker test is quick
    server = ServerThread(controller_app(ControllerSettings(heart_beat_expiration=3.0, heart_beat_check_interval=0.5)))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(loaded, controller):
    engine, conv_mode = loaded
    w = make_worker(engine, conv_mode, controller=controller.url, heart_beat_interval=0.5,
                    max_image_pixels=256 * 256, max_body_bytes=2_000_000)
    server = start_worker(w)
    yield w, server
    server.stop()


def stream(url: str, payload: dict, timeout: float = 60) -> list[dict]:
    with httpx.stream("POST", url + "/worker_generate_stream", json=payload, timeout=timeout, trust_env=False) as r:
        assert r.status_code == 200, r.read()
        return list(iter_chunks(r.iter_bytes()))


def greedy_answer(engine, prompt: str, images: list, max_new_tokens: int) -> str:
    return engine.generate([Request(prompt, images, GenerationParams(temperature=0, max_new_tokens=max_new_tokens))])[0]


# --- OCR / GEN placement (docs/original.md#fixed-defects) -----------------------------------------------------------
TEMPLATES = [name for name in conv_templates if assistant_tail(name).strip()]


@pytest.mark.parametrize("template", TEMPLATES)
def test_add_content_goes_to_the_end_of_the_last_user_turn(template):
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], "first question")
    conv.append_message(conv.roles[1], "first answer")
    conv.append_message(conv.roles[0], "<image>\nsecond question")
    conv.append_message(conv.roles[1], None)
    expected = conv.copy()
    expected.insert_before_assistant(" <GEN>")
    assert add_content(conv.get_prompt(), " <GEN>", template) == expected.get_prompt()
    # without knowing the template, it is recognised by the prompt's assistant marker
    assert add_content(conv.get_prompt(), "\nReference OCR Token: A, B\n") == \
        _inserted(conv, "\nReference OCR Token: A, B\n")


def _inserted(conv, text):
    c = conv.copy()
    c.insert_before_assistant(text)
    return c.get_prompt()


def test_add_content_fixes_the_original_vicuna_and_gemma_placement():
    vicuna = vicuna_prompt("What is it?")
    assert add_content(vicuna, " <GEN>").endswith("What is it? <GEN> ASSISTANT:")
    gemma = conv_templates["gemma"].copy()
    gemma.append_message(gemma.roles[0], "Hi")
    gemma.append_message(gemma.roles[1], None)
    assert add_content(gemma.get_prompt(), " <GEN>").endswith("Hi <GEN><end_of_turn>\n<start_of_turn>model\n")
    # a prompt without any known marker: appended at the end
    assert add_content("just text", "!") == "just text!"


def test_cli_flags_parse_with_the_readme_abbreviations():
    s = parse_settings(["--controller", "http://127.0.0.1:10000", "--port", "40000", "--worker",
                        "http://127.0.0.1:40000", "--model-path", "/x/MGM-7B"])
    assert s.controller_address == "http://127.0.0.1:10000" and s.worker_address == "http://127.0.0.1:40000"
    assert s.host == "127.0.0.1" and s.limit_model_concurrency == 5 and not s.ocr and not s.gen
    full = parse_settings(["--controller-address", "http://c:1", "--worker-address", "http://w:2", "--model-path", "p"])
    assert (full.controller_address, full.worker_address) == ("http://c:1", "http://w:2")
    with pytest.raises(UserError, match="--controller-address 'nope'"):
        parse_settings(["--model-path", "p", "--controller", "nope"])
    with pytest.raises(UserError, match="mutually exclusive"):
        parse_settings(["--model-path", "p", "--load-8bit", "--load-4bit"])


# --- protocol ----------------------------------------------------------------------------------------
def test_registers_and_reports_status(worker, controller):
    w, server = worker
    assert httpx.post(controller.url + "/list_models", trust_env=False).json() == {"models": [TINY_MODEL]}
    assert httpx.post(controller.url + "/get_worker_address", json={"model": TINY_MODEL},
                      trust_env=False).json() == {"address": server.url}
    status = httpx.post(server.url + "/worker_get_status", trust_env=False).json()
    assert status["model_names"] == [TINY_MODEL] and status["speed"] == 1 and status["queue_length"] == 0
    assert status["conv_template"] == "vicuna_v1" and status["ocr"] is False and status["gen"] is False


def test_stream_chunks_repeat_the_prompt_and_match_greedy_generation(worker, controller, loaded):
    engine, _ = loaded
    prompt = vicuna_prompt("What is in the image?")
    payload = {"model": TINY_MODEL, "prompt": prompt, "images": [image_b64()], "temperature": 0,
               "max_new_tokens": 24, "stop": "</s>"}
    chunks = stream(controller.url, payload)  # through the controller's proxy
    assert chunks and all(c["error_code"] == 0 and c["text"].startswith(prompt) for c in chunks)
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # each chunk extends the previous
    from mgm.serve.security import decode_base64_image

    expected = greedy_answer(engine, prompt, [decode_base64_image(image_b64(), mode="RGB")], 24)
    assert texts[-1][len(prompt):].strip() == expected
    assert len(expected) > 0


def test_stop_string_is_trimmed_and_stop_may_be_absent(worker, loaded):
    engine, _ = loaded
    w, server = worker
    prompt = vicuna_prompt("Tell me a story.", n_images=0)
    full = stream(server.url, {"prompt": prompt, "temperature": 0, "max_new_tokens": 32})[-1]["text"][len(prompt):]
    assert full.strip() == greedy_answer(engine, prompt, [], 32)
    stop = full.strip()[6:9]
    assert len(stop) == 3
    cut = stream(server.url, {"prompt": prompt, "temperature": 0, "max_new_tokens": 32, "stop": stop})[-1]["text"]
    assert cut == prompt + full[:full.index(stop)]


@pytest.mark.parametrize("via", ["worker", "controller"])
def test_bad_requests_are_4xx_saying_what_happened(worker, controller, via):
    _, server = worker
    url = (server.url if via == "worker" else controller.url) + "/worker_generate_stream"
    base = {"model": TINY_MODEL, "prompt": vicuna_prompt("Hi", n_images=0)}
    cases = [  # (body, what the message must name)
        ({**base, "prompt": vicuna_prompt("Hi", n_images=1)}, "1 <image> tag(s) but 0 image(s)"),
        ({**base, "max_new_tokens": -1}, "max_new_tokens"),
        ({**base, "temperature": 5}, "temperature"),
        ({**base, "images": [], "prompt": 7}, "prompt"),
    ]
    for body, named in cases:
        r = httpx.post(url, json=body, trust_env=False, timeout=30)
        assert r.status_code == 400, (body, r.text)
        answer = r.json()
        assert answer["error_code"] == ERROR_BAD_REQUEST and named in answer["text"], answer
        assert answer["error"]["message"] == answer["text"]
    raw_cases = [  # bodies that are not valid JSON text: lone surrogate, 50,000 deep, invalid UTF-8
        (b'{"prompt": "hi \\udcff"}', "surrogate"),
        (b'{"prompt": "x", "extra": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "recursion"),
        (b'{"prompt": "hi \xff\xfe"}', "unicode"),
    ]
    for raw, named in raw_cases:
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, trust_env=False, timeout=30)
        assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
        assert named in r.json()["text"].lower() and r.json()["error_code"] == ERROR_BAD_REQUEST
    assert httpx.get(server.url + "/health", trust_env=False).json()["status"] == "ok"


def test_health_answers_while_a_maximal_prompt_is_refused(worker):
    """A prompt of 20 MB (under the body limit here) is refused by a character bound, never tokenised:
    the event loop stays free (the original tokenised it on the loop: /health stalled for ~20 s)."""
    w, _ = worker
    big_worker = make_worker(w.engine, w.conv_mode, max_body_bytes=64 * 1024 * 1024)
    server = start_worker(big_worker)
    huge = "hello " * (20 * 1024 * 1024 // 6)
    answers: dict[str, httpx.Response] = {}

    def send(kind: str) -> None:
        if kind == "v1":
            body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": huge}]}
            answers[kind] = httpx.post(server.url + "/v1/chat/completions", json=body, trust_env=False, timeout=60)
        else:
            answers[kind] = httpx.post(server.url + "/worker_generate_stream", json={"prompt": huge},
                                       trust_env=False, timeout=60)

    try:
        for kind in ("v1", "original"):
            t0 = time.monotonic()
            sender = threading.Thread(target=send, args=(kind,))
            sender.start()
            worst = 0.0
            while sender.is_alive():
                h0 = time.monotonic()
                assert httpx.get(server.url + "/health", trust_env=False, timeout=5).status_code == 200
                worst = max(worst, time.monotonic() - h0)
                time.sleep(0.02)
            sender.join()
            assert worst < 1.0, f"/health took {worst:.2f} s during the {kind} request"
            assert time.monotonic() - t0 < 20
        assert answers["v1"].status_code == 400 and "characters" in answers["v1"].json()["error"]["message"]
        # refused without echoing the 20 MB prompt back (issue 21)
        assert answers["original"].status_code == 400 and len(answers["original"].content) < 2000
        assert "characters" in answers["original"].json()["text"]
    finally:
        server.stop()


def test_token_budget_counts_the_real_image_tokens(worker, loaded, monkeypatch):
    engine, _ = loaded
    _, server = worker
    long_prompt = vicuna_prompt("hello " * 2100, n_images=0)  # over the character bound: a 400, no echo
    r = httpx.post(server.url + "/worker_generate_stream", json={"prompt": long_prompt, "max_new_tokens": 16},
                   trust_env=False, timeout=30)
    assert r.status_code == 400 and "start a new conversation" in r.json()["text"] and len(r.content) < 1000
    # a prompt that fits as text but not with its image tokens (HD checkpoints have 5x more of them)
    prompt = vicuna_prompt("hi", n_images=1)
    n_ids = len(engine.encode_prompt(Request(prompt, [object()])))
    monkeypatch.setattr(engine, "num_image_tokens", lambda: engine.model.config.max_position_embeddings - n_ids)
    chunks = stream(server.url, {"prompt": prompt, "images": [image_b64()], "max_new_tokens": 16})
    assert chunks == [{"text": prompt + EXCEEDS_MAX_TOKENS_MSG, "error_code": 0}]


def test_corrupt_and_oversized_images_get_json_errors(worker):
    _, server = worker
    base = {"prompt": vicuna_prompt("Hi"), "max_new_tokens": 4}
    r = httpx.post(server.url + "/worker_generate_stream", json={**base, "images": ["bm90IGFuIGltYWdl"]},
                   trust_env=False)
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["code"] == "invalid_image" and body["error_code"] == ERROR_BAD_REQUEST
    assert body["text"].startswith("images[0]: not a readable image file") and "BytesIO" not in body["text"]
    r = httpx.post(server.url + "/worker_generate_stream", json={**base, "images": [image_b64((300, 300))]},
                   trust_env=False)
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    r = httpx.post(server.url + "/worker_generate_stream", content=b'{"prompt": "' + b"x" * 2_100_000 + b'"}',
                   headers={"content-type": "application/json"}, trust_env=False)
    assert r.status_code == 413


def test_malformed_json_body(worker):
    _, server = worker
    r = httpx.post(server.url + "/worker_generate_stream", content=b"{not json",
                   headers={"content-type": "application/json"}, trust_env=False)
    assert r.status_code == 400 and r.json()["error_code"] == ERROR_BAD_REQUEST
    r = httpx.post(server.url + "/worker_generate_stream", json={"images": []}, trust_env=False)  # no prompt
    assert r.status_code == 400 and "prompt: Field required" in r.json()["text"]


# --- disconnects and load ----------------------------------------------------------------------------
def _record_tickets(monkeypatch, w) -> list:
    tickets: list = []
    original = w.submit

    def submit(request):
        ticket = original(request)
        tickets.append(ticket)
        return ticket

    monkeypatch.setattr(w, "submit", submit)
    return tickets


def test_client_disconnect_cancels_its_generation(worker, monkeypatch):
    w, server = worker
    tickets = _record_tickets(monkeypatch, w)
    payload = {"prompt": vicuna_prompt("Write a long story.", n_images=0), "temperature": 0.7,
               "max_new_tokens": 1024}
    with httpx.stream("POST", server.url + "/worker_generate_stream", json=payload, timeout=30,
                      trust_env=False) as r:
        first = next(iter_chunks(r.iter_bytes()))
        assert first["error_code"] == 0
    # the connection is closed: the row must stop long before 1024 tokens
    deadline = time.monotonic() + 20
    while not (tickets and tickets[0].finished) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tickets[0].finished and tickets[0].result.finish_reason == "cancelled"
    assert tickets[0].result.completion_tokens < 1024
    while w.queue_length and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.queue_length == 0
    # and the worker keeps serving
    assert stream(server.url, {"prompt": vicuna_prompt("Hi", n_images=0), "max_new_tokens": 4})[-1]["error_code"] == 0


def test_32_concurrent_streams_all_complete(worker):
    w, server = worker
    before = w.batcher.stats()

    async def one(client: httpx.AsyncClient, i: int) -> dict:
        payload = {"prompt": vicuna_prompt(f"Question number {i}?", n_images=i % 2), "temperature": 0.5 * (i % 3),
                   "top_p": 0.9, "max_new_tokens": 8 + i % 5, "images": [image_b64()] * (i % 2)}
        async with client.stream("POST", server.url + "/worker_generate_stream", json=payload) as r:
            assert r.status_code == 200
            chunks = [json.loads(m) async for m in _amessages(r)]
        return chunks[-1]

    async def main() -> list[dict]:
        async with httpx.AsyncClient(timeout=60, trust_env=False,
                                     limits=httpx.Limits(max_connections=40)) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(32))), timeout=90)

    finals = asyncio.run(main())
    assert len(finals) == 32 and all(f["error_code"] == 0 for f in finals)
    # requests were generated together (up to the limit of 5 in flight), not one by one
    after = w.batcher.stats()
    assert after["largest_batch"] == 5
    assert (after["row_steps"] - before["row_steps"]) / (after["steps"] - before["steps"]) > 2
    assert w.queue_length == 0
    assert httpx.get(server.url + "/health", trust_env=False).json()["status"] == "ok"


async def _amessages(response):
    from mgm.serve.protocol import asplit_chunks

    async for message in asplit_chunks(response.aiter_bytes()):
        yield message


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "window"])
def test_a_batch_row_failure_only_fails_that_request(loaded, continuous):
    engine, _ = loaded
    b = batcher_mod.DynamicBatcher(engine, max_batch_size=4, batch_window=0.2, continuous=continuous).start()
    try:
        good = b.submit(Request(vicuna_prompt("Hi", 0), [], GenerationParams(temperature=0, max_new_tokens=4)))
        bad = b.submit(Request(vicuna_prompt("Hi", 1), [], GenerationParams(temperature=0, max_new_tokens=4)))
        assert good.wait(30).completion_tokens > 0
        with pytest.raises(Exception, match="<image> tags"):
            bad.wait(30)
    finally:
        b.stop()


# --- a worker process killed mid-request -------------------------------------------------------------
def test_killed_worker_is_dropped_and_the_next_request_goes_to_a_live_one(zoo, loaded, tmp_path):
    engine, conv_mode = loaded
    ctrl = ServerThread(controller_app(ControllerSettings(heart_beat_expiration=2.0, heart_beat_check_interval=0.3)))
    port = free_port()
    victim_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    victim = subprocess.Popen(
        [sys.executable, "-m", "mgm.serve.model_worker", "--controller", ctrl.url, "--worker", victim_url,
         "--port", str(port), "--model-path", model_path(zoo), "--device", "cpu", "--heart-beat-interval", "0.5",
         "--log-dir", str(tmp_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    live = live_server = None
    try:
        deadline = time.monotonic() + 90
        while TINY_MODEL not in httpx.post(ctrl.url + "/list_models", trust_env=False).json()["models"]:
            assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker process did not register"
            time.sleep(0.2)
        payload = {"model": TINY_MODEL, "prompt": vicuna_prompt("Write a long story.", n_images=0),
                   "temperature": 0.7, "max_new_tokens": 1024}
        with httpx.stream("POST", ctrl.url + "/worker_generate_stream", json=payload, timeout=30,
                          trust_env=False) as r:
            chunks = iter_chunks(r.iter_bytes())
            assert next(chunks)["error_code"] == 0  # the victim is generating
            # a live worker for the same model joins, then the victim dies mid-request
            live = make_worker(engine, conv_mode, controller=ctrl.url, heart_beat_interval=0.3)
            live_server = start_worker(live)
            victim.kill()
            rest = list(chunks)  # ends (no hang) with the controller's error chunk
        assert rest and rest[-1]["error_code"] == 3
        registry = ctrl.server.config.app.state.registry
        deadline = time.monotonic() + 15
        while victim_url in registry.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert victim_url not in registry.workers and live_server.url in registry.workers
        final = stream(ctrl.url, {**payload, "max_new_tokens": 6})[-1]
        assert final["error_code"] == 0 and final["text"].startswith(payload["prompt"])
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait(10)
        if live_server is not None:
            live_server.stop()
        ctrl.stop()


# --- batched generation ------------------------------------------------------------------------------
def test_generate_rows_matches_one_by_one_generation(loaded):
    from mgm.serve.engine import generate_rows
    from mgm.serve.security import decode_base64_image

    engine, _ = loaded
    red = decode_base64_image(image_b64((48, 40), "red"), mode="RGB")
    blue = decode_base64_image(image_b64((30, 60), "blue"), mode="RGB")
    requests = [
        Request(vicuna_prompt("What is this?"), [red], GenerationParams(temperature=0, max_new_tokens=12)),
        Request(vicuna_prompt("Hello there, how are you doing today?", 0), [], GenerationParams(temperature=0, max_new_tokens=20)),
        Request(vicuna_prompt("Describe"), [blue], GenerationParams(temperature=0, max_new_tokens=8)),
        Request(vicuna_prompt("A sampled row"), [red], GenerationParams(temperature=0.8, top_p=0.9, max_new_tokens=6)),
    ]
    single = [engine.generate([r])[0] for r in requests[:3]]
    pieces: dict[int, list[str]] = {i: [] for i in range(4)}
    done: list[int] = []
    results = generate_rows(engine, requests, on_text=lambda i, p: pieces[i].append(p),
                            on_done=lambda i, r: done.append(i))
    assert [r.text.strip() for r in results[:3]] == single  # batching (left padding, mixed rows) changes nothing
    assert all("".join(pieces[i]) == results[i].text for i in range(4))
    assert [r.completion_tokens for r in results] == [12, 20, 8, 6] or any(r.finish_reason == "stop" for r in results)
    assert sorted(done) == [0, 1, 2, 3]
    # per-row stop strings
    stop = single[1][5:8]
    cut = generate_rows(engine, [Request(requests[1].prompt, [], GenerationParams(temperature=0, max_new_tokens=20,
                                                                                  stop=[stop]))])[0]
    assert cut.text.strip() == single[1][:single[1].index(stop)].strip() and cut.finish_reason == "stop"


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "window"])
def test_short_rows_finish_before_the_batch_does(loaded, continuous):
    engine, _ = loaded
    b = batcher_mod.DynamicBatcher(engine, max_batch_size=4, batch_window=0.3, continuous=continuous).start()
    try:
        short = b.submit(Request(vicuna_prompt("Hi", 0), [], GenerationParams(temperature=0, max_new_tokens=2)))
        long = b.submit(Request(vicuna_prompt("Tell me a long story.", 0), [],
                                GenerationParams(temperature=0, max_new_tokens=400)))
        assert short.wait(30).completion_tokens == 2
        finished_early = not long.finished
        result = long.wait(120)
        assert b.largest_batch == 2 and b.rows_run == 2
        assert finished_early or result.completion_tokens <= 3
    finally:
        b.stop()


def test_continuous_batch_rows_joining_mid_flight_match_one_by_one_generation(loaded):
    from mgm.serve.engine import ContinuousBatch
    from mgm.serve.security import decode_base64_image

    engine, _ = loaded
    red = decode_base64_image(image_b64((48, 40), "red"), mode="RGB")
    requests = [
        Request(vicuna_prompt("What is this?"), [red], GenerationParams(temperature=0, max_new_tokens=12)),
        Request(vicuna_prompt("Hello there, how are you doing today?", 0), [], GenerationParams(temperature=0, max_new_tokens=20)),
        Request(vicuna_prompt("Describe"), [red], GenerationParams(temperature=0, max_new_tokens=8)),
        Request(vicuna_prompt("Tell me a long story, please.", 0), [], GenerationParams(temperature=0, max_new_tokens=30)),
    ]
    expected = []
    for request in requests:
        ids = engine.generate_ids([request])[0].tolist()
        cut = next((i for i, t in enumerate(ids) if t in engine.eos_ids), len(ids))
        expected.append(ids[:cut])
    batch = ContinuousBatch(engine)
    done: list[int] = []
    rows = [batch.new_row(r, on_done=lambda result, i=i: done.append(i)) for i, r in enumerate(requests)]
    batch.add(rows[:2])
    for _ in range(3):
        batch.step()
    batch.add(rows[2:3])  # joins a running batch with a longer cache (left padding)
    batch.step()
    batch.add(rows[3:])
    sizes = []
    while batch.size:
        sizes.append(batch.size)
        batch.step()
    assert [row.decoder.ids for row in rows] == expected  # token for token
    assert max(sizes) == 4 and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)  # rows left as they ended
    assert sorted(done) == [0, 1, 2, 3] and batch.cache is None


def test_hd_checkpoint_budget_and_continuous_batching(zoo):
    """HD checkpoints put 5x the image tokens in the prompt; the worker's budget and batching handle them."""
    from mgm.serve.engine import ContinuousBatch
    from mgm.serve.security import decode_base64_image

    engine, conv_mode = load_engine(model_path(zoo, "MGM-Tiny-Vicuna-HD"))
    per_view = engine.model.get_vision_tower().num_patches
    assert engine.num_image_tokens() == 5 * per_view  # 2x2 grid + the global view
    image = decode_base64_image(image_b64((64, 48)), mode="RGB")
    requests = [Request(vicuna_prompt("What is this?"), [image], GenerationParams(temperature=0, max_new_tokens=6)),
                Request(vicuna_prompt("Hi", 0), [], GenerationParams(temperature=0, max_new_tokens=6))]
    expected = [engine.generate_ids([r])[0].tolist() for r in requests]
    batch = ContinuousBatch(engine)
    rows = [batch.new_row(r) for r in requests]
    batch.add(rows[1:])
    batch.step()
    batch.add(rows[:1])
    while batch.size:
        batch.step()
    for row, ids in zip(rows, expected):
        cut = next((i for i, t in enumerate(ids) if t in engine.eos_ids), len(ids))
        assert row.decoder.ids == ids[:cut]
    # a prompt that fits with 1x image tokens but not with the HD count gets the original's answer
    limit = engine.model.config.max_position_embeddings
    words = 1
    while True:  # grow the text until it leaves room for 1x the image tokens but not for 5x
        prompt = vicuna_prompt("hi " * words)
        n_ids = len(engine.encode_prompt(Request(prompt, [image])))
        if n_ids >= limit - 3 * per_view:
            break
        words += 8
    w = make_worker(engine, conv_mode, model_name="MGM-Tiny-Vicuna-HD")
    server = start_worker(w)
    try:
        assert n_ids + per_view < limit < n_ids + 5 * per_view
        chunks = stream(server.url, {"prompt": prompt, "images": [image_b64((64, 48))], "max_new_tokens": 8})
        assert chunks == [{"text": prompt + EXCEEDS_MAX_TOKENS_MSG, "error_code": 0}]
    finally:
        server.stop()
