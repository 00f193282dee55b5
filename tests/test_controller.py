"""Controller, wire protocol and serving security: real uvicorn servers on 127.0.0.1 in threads, with
fake workers that speak the worker protocol (no model needed)."""
from __future__ import annotations

import base64
import json
import logging
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from serving_helpers import FakeWorker, ServerThread, png_bytes, start_fake

from mgm.serve import controller as controller_mod
from mgm.serve.controller import (
    ControllerSettings,
    WorkerRegistry,
    create_app,
    parse_settings,
)
from mgm.serve.logging_utils import build_logger
from mgm.serve.openai_protocol import (
    load_image_url,
    resolve_image_url,
)
from mgm.serve.protocol import (
    ERROR_BAD_REQUEST,
    ERROR_CONTROLLER_REQUEST,
    ERROR_NO_WORKER,
    SERVER_ERROR_MSG,
    GenerateParams,
    ImageInputError,
    ImageTooLargeError,
    WorkerStatus,
    encode_chunk,
    iter_chunks,
)
from mgm.serve.security import ImagePolicy, decode_base64_image

pytestmark = pytest.mark.timeout(60)


# --- helpers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctrl() -> Iterator[str]:
    """shortest_queue controller with a 1 s heart-beat expiration swept every 0.1 s."""
    server = ServerThread(create_app(ControllerSettings(
        port=0, heart_beat_expiration=1.0, heart_beat_check_interval=0.1, worker_timeout=5, connect_timeout=2)))
    _CONTROLLERS[server.url] = server
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, FakeWorker]]:
    started = {"a": start_fake(["m-a", "m-shared"]), "b": start_fake(["m-b", "m-shared"])}
    yield started
    for w in started.values():
        w.server.stop()


def post(url: str, body=None, **kw) -> httpx.Response:
    return httpx.post(url, json=body, timeout=10, trust_env=False, **kw)


def register(ctrl: str, worker: FakeWorker, check_heart_beat: bool = False, status: dict | None = None) -> None:
    r = post(ctrl + "/register_worker", {"worker_name": worker.url, "check_heart_beat": check_heart_beat,
                                         "worker_status": status})
    assert r.status_code == 200, r.text
    assert r.json() is None


def stream_chunks(url: str, body: dict, **kw) -> list[dict]:
    with httpx.stream("POST", url, json=body, timeout=10, trust_env=False, **kw) as r:
        assert r.status_code == 200
        return list(iter_chunks(r.iter_bytes()))


# --- protocol ----------------------------------------------------------------------------------------
def test_chunk_encoding_roundtrip_and_constants():
    assert SERVER_ERROR_MSG == "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
    chunks = [{"text": "a\u00e9\u4e2d", "error_code": 0}, {"text": "b", "error_code": 1, "image": "QUJD"}]
    wire = b"".join(encode_chunk(c) for c in chunks)
    assert wire == b"".join(json.dumps(c).encode() + b"\0" for c in chunks)
    # any byte split (one byte at a time) parses back identically, trailing text without NUL included
    assert list(iter_chunks(wire[i:i + 1] for i in range(len(wire)))) == chunks
    assert list(iter_chunks([b'{"text": "x", "error_code": 0}'])) == [{"text": "x", "error_code": 0}]


def test_generate_params_defaults_and_cap():
    p = GenerateParams.model_validate({"prompt": "hi", "images": None, "extra_field": 5, "max_new_tokens": 5000})
    assert (p.temperature, p.top_p, p.max_new_tokens, p.stop, p.gen_image, p.use_ocr) == (1.0, 1.0, 1024, None,
                                                                                        False, False)
    assert p.images == [] and p.model_dump()["extra_field"] == 5
    assert GenerateParams(prompt="x").max_new_tokens == 256


# --- registry (no HTTP) ------------------------------------------------------------------------------
def test_registry_dispatch_and_expiry():
    now = [100.0]
    reg = WorkerRegistry("shortest_queue", clock=lambda: now[0])
    reg.register("http://a/", False, WorkerStatus(model_names=["m"], speed=1, queue_length=2))
    reg.register("http://b", True, WorkerStatus(model_names=["m", "n"], speed=1, queue_length=0))
    reg.register("http://z", True, WorkerStatus(model_names=["m"], speed=0, queue_length=0))  # speed 0: never
    assert reg.list_models() == ["m", "n"]
    assert [reg.get_worker_address("m") for _ in range(3)] == ["http://b", "http://b", "http://a"]
    assert reg.workers["http://b"].queue_length == 2 and reg.workers["http://a"].queue_length == 3
    assert reg.get_worker_address("nope") == ""
    assert reg.heart_beat("http://b/", 0) and not reg.heart_beat("http://c", 0)
    now[0] += 20
    assert reg.heart_beat("http://b", 7)
    assert reg.poll_targets() == ["http://a"]  # not heart-beat checked: the controller polls it
    reg.refresh("http://a", WorkerStatus(model_names=["m"], speed=1, queue_length=4))
    now[0] += 15  # b beat 15 s ago, a polled 15 s ago, z registered 35 s ago
    assert reg.remove_expired(30) == ["http://z"]
    now[0] += 16  # every entry expires when nothing is heard from it
    assert reg.remove_expired(30) == ["http://a", "http://b"]
    assert len(reg) == 0

    import random

    lot = WorkerRegistry("lottery", rng=random.Random(0))
    lot.register("http://slow", False, WorkerStatus(model_names=["m"], speed=1, queue_length=0))
    lot.register("http://fast", False, WorkerStatus(model_names=["m"], speed=3, queue_length=0))
    picks = [lot.get_worker_address("m") for _ in range(2000)]
    assert 0.70 < picks.count("http://fast") / len(picks) < 0.80  # expected 0.75
    assert lot.workers["http://fast"].queue_length == 0  # lottery never touches queues


# --- controller over HTTP ----------------------------------------------------------------------------
def test_register_list_address_status_health(ctrl, workers):
    a, b = workers["a"], workers["b"]
    register(ctrl, a)  # no worker_status: the controller polls the worker
    register(ctrl, b, status=b.status())
    assert set(post(ctrl + "/list_models").json()["models"]) >= {"m-a", "m-b", "m-shared"}
    assert post(ctrl + "/get_worker_address", {"model": "m-a"}).json() == {"address": a.url}
    assert post(ctrl + "/get_worker_address", {"model": "m-unknown"}).json() == {"address": ""}
    status = post(ctrl + "/worker_get_status").json()
    assert set(status["model_names"]) >= {"m-a", "m-b", "m-shared"} and status["speed"] >= 2
    health = httpx.get(ctrl + "/health", trust_env=False)
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["workers"] >= 2
    assert post(ctrl + "/receive_heart_beat", {"worker_name": a.url, "queue_length": 0}).json() == {"exist": True}
    assert post(ctrl + "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0}).json() == {
        "exist": False}


def test_malformed_requests_get_json_errors(ctrl):
    r = httpx.post(ctrl + "/get_worker_address", content=b"{not json", trust_env=False,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_code"] == ERROR_BAD_REQUEST and "JSON" in r.json()["text"]
    r = post(ctrl + "/register_worker", {"check_heart_beat": True})
    assert r.status_code == 400 and "worker_name: Field required" in r.json()["text"]
    r = post(ctrl + "/register_worker", {"worker_name": "not-a-url", "check_heart_beat": False})
    assert r.status_code == 400 and "worker_name" in r.json()["error"]["message"]
    r = post(ctrl + "/register_worker", {"worker_name": "http://127.0.0.1:9", "check_heart_beat": False})
    assert r.status_code == 400 and "cannot verify worker" in r.json()["error"]["message"]
    r = httpx.post(ctrl + "/v1/chat/completions", content=b"{oops", trust_env=False)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = post(ctrl + "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert r.status_code == 400 and "n=2" in r.json()["error"]["message"]


def test_generate_stream_proxy(ctrl, workers):
    a = workers["a"]
    register(ctrl, a)
    body = {"model": "m-a", "prompt": "Q: ", "images": [], "temperature": 0.2, "stop": "</s>", "custom": 1}
    chunks = stream_chunks(ctrl + "/worker_generate_stream", body)
    assert [c["text"] for c in chunks] == [f"Q: [{a.url}]", f"Q: [{a.url}] héllo", f"Q: [{a.url}] héllo wörld"]
    assert all(c["error_code"] == 0 for c in chunks)
    sent = a.requests[-1]
    assert sent["prompt"] == "Q: " and sent["temperature"] == 0.2 and sent["custom"] == 1


def test_no_worker_single_error_chunk_fast(ctrl, workers):
    before = sum(len(w.requests) for w in workers.values())
    t0 = time.monotonic()
    chunks = stream_chunks(ctrl + "/worker_generate_stream", {"model": "m-nobody", "prompt": "x"})
    assert time.monotonic() - t0 < 2
    assert chunks == [{"text": SERVER_ERROR_MSG, "error_code": ERROR_NO_WORKER}]  # and no second "code 3" chunk
    assert sum(len(w.requests) for w in workers.values()) == before


def test_heart_beat_expiry(ctrl):
    beating, silent, unchecked = start_fake(["m-hb"]), start_fake(["m-hb"]), start_fake(["m-hb"])
    try:
        register(ctrl, beating, check_heart_beat=True)
        register(ctrl, silent, check_heart_beat=True)
        register(ctrl, unchecked, check_heart_beat=False)
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:  # 1.8 s > 1 s expiration + 0.1 s sweep
            assert post(ctrl + "/receive_heart_beat", {"worker_name": beating.url, "queue_length": 0}).json()["exist"]
            time.sleep(0.2)
        addresses = {post(ctrl + "/get_worker_address", {"model": "m-hb"}).json()["address"] for _ in range(6)}
        assert addresses == {beating.url, unchecked.url}
        # an expired worker is told to register again
        assert post(ctrl + "/receive_heart_beat", {"worker_name": silent.url, "queue_length": 0}).json() == {
            "exist": False}
    finally:
        for w in (beating, silent, unchecked):
            w.server.stop()


def test_unreachable_worker_is_dropped_at_once_and_the_request_fails_over(ctrl):
    doomed, live = start_fake(["m-kill"]), start_fake(["m-kill"], queue_length=1000)
    try:
        register(ctrl, doomed, check_heart_beat=True)
        register(ctrl, live)  # polled by the controller; a long queue: the dead one is preferred while known
        doomed.server.stop()
        t0 = time.monotonic()
        chunks = stream_chunks(ctrl + "/worker_generate_stream", {"model": "m-kill", "prompt": "p"})
        assert chunks[-1] == {"text": f"p[{live.url}] héllo wörld", "error_code": 0}  # served by the live one
        assert time.monotonic() - t0 < 0.9  # well before the 1 s heart-beat expiry
        assert post(ctrl + "/get_worker_address", {"model": "m-kill"}).json()["address"] == live.url
        assert post(ctrl + "/receive_heart_beat", {"worker_name": doomed.url, "queue_length": 0}).json() == {
            "exist": False}
        # the OpenAI route fails over too, streamed and not
        import openai

        again = start_fake(["m-kill"])
        register(ctrl, again, check_heart_beat=True)
        again.server.stop()
        client = openai.OpenAI(base_url=ctrl + "/v1", api_key="unused", max_retries=0, timeout=10)
        out = client.chat.completions.create(model="m-kill", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content == f"{live.url} says: hi"
        register(ctrl, again := start_fake(["m-kill"]), check_heart_beat=True)
        again.server.stop()
        pieces = list(client.chat.completions.create(model="m-kill", stream=True,
                                                     messages=[{"role": "user", "content": "yo"}]))
        assert "".join(p.choices[0].delta.content or "" for p in pieces).strip() == f"{live.url} says: yo"
        assert set(ctrl_registry(ctrl)) >= {live.url} and again.url not in ctrl_registry(ctrl)
    finally:
        live.server.stop()


def ctrl_registry(url: str) -> dict:
    """The registry of the controller serving `url` (a ServerThread of this module)."""
    return _CONTROLLERS[url].server.config.app.state.registry.workers


_CONTROLLERS: dict[str, ServerThread] = {}


def test_refresh_all_workers_drops_dead(ctrl):
    dead, alive = start_fake(["m-refresh"]), start_fake(["m-refresh"])
    try:
        register(ctrl, dead)
        register(ctrl, alive)
        dead.server.stop()
        assert post(ctrl + "/refresh_all_workers").status_code == 200
        addresses = {post(ctrl + "/get_worker_address", {"model": "m-refresh"}).json()["address"] for _ in range(4)}
        assert addresses == {alive.url}
    finally:
        alive.server.stop()


def test_openai_routes_with_official_client(ctrl, workers):
    import openai

    b = workers["b"]
    register(ctrl, b)
    client = openai.OpenAI(base_url=ctrl + "/v1", api_key="unused", max_retries=0, timeout=10)
    assert {"m-b", "m-shared"} <= {m.id for m in client.models.list().data}
    out = client.chat.completions.create(model="m-b", messages=[{"role": "user", "content": "hi there"}])
    assert out.choices[0].message.content == f"{b.url} says: hi there"
    assert out.usage.total_tokens == 7 and out.object == "chat.completion"
    parts = [{"type": "text", "text": "look"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes()).decode()}}]
    stream = client.chat.completions.create(model="m-b", messages=[{"role": "user", "content": parts}], stream=True,
                                            max_tokens=8, stop=["\n"])
    pieces = list(stream)
    assert "".join(p.choices[0].delta.content or "" for p in pieces).strip() == f"{b.url} says: look"
    assert pieces[-1].choices[0].finish_reason == "stop"
    forwarded = b.requests[-1]
    assert forwarded["max_tokens"] == 8 and forwarded["stop"] == ["\n"] and forwarded["stream"] is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m-none", messages=[{"role": "user", "content": "x"}])


def test_api_key_and_body_limit(workers):
    import openai

    server = ServerThread(create_app(ControllerSettings(port=0, api_key="s3cret", max_body_bytes=2000)))
    try:
        url = server.url
        assert post(url + "/list_models").status_code == 401
        r = post(url + "/list_models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert post(url + "/list_models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert post(url + "/list_models", headers={"x-api-key": "s3cret"}).status_code == 200
        assert httpx.get(url + "/health", trust_env=False).status_code == 200  # health stays open
        a = workers["a"]
        r = post(url + "/register_worker", {"worker_name": a.url, "check_heart_beat": False},
                 headers={"x-api-key": "s3cret"})
        assert r.status_code == 200
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0, timeout=10)
        reply = good.chat.completions.create(model="m-a", messages=[{"role": "user", "content": "k"}])
        assert reply.choices[0].message.content.endswith("says: k")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        big = {"model": "m-a", "prompt": "x" * 5000}
        r = post(url + "/worker_generate_stream", big, headers={"x-api-key": "s3cret"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(10):
                yield b"x" * 500

        r = httpx.post(url + "/worker_generate_stream", content=chunked(), headers={"x-api-key": "s3cret"},
                       trust_env=False)
        assert r.status_code == 413
    finally:
        server.stop()


def test_lottery_controller_over_http():
    fast, slow = start_fake(["m-lot"], speed=4), start_fake(["m-lot"], speed=1)
    server = ServerThread(create_app(ControllerSettings(port=0, dispatch_method="lottery")))
    try:
        register(server.url, fast)
        register(server.url, slow)
        with httpx.Client(trust_env=False) as c:
            picks = [c.post(server.url + "/get_worker_address", json={"model": "m-lot"}).json()["address"]
                     for _ in range(150)]
        assert set(picks) == {fast.url, slow.url}
        assert picks.count(fast.url) > picks.count(slow.url) * 2  # expected 4:1
    finally:
        server.stop()
        fast.server.stop()
        slow.server.stop()


def test_helper_scripts(ctrl, workers, capsys):
    from mgm.serve import register_worker

    w = start_fake(["m-script"])
    try:
        register_worker.main(["--controller-address", ctrl, "--worker-name", w.url])
        assert post(ctrl + "/get_worker_address", {"model": "m-script"}).json()["address"] == w.url
        with pytest.raises(SystemExit) as exc:
            register_worker.main(["--controller-address", "http://127.0.0.1:9", "--worker-name", w.url,
                                  "--timeout", "2"])
        assert exc.value.code == 2 and "cannot reach the controller" in capsys.readouterr().err

        pytest.importorskip("mgm.conversation")
        from mgm.serve import test_message

        test_message.main(["--controller-address", ctrl, "--model-name", "m-script", "--message", "Hi"])
        out = capsys.readouterr().out
        assert out.rstrip().endswith(f"[{w.url}] héllo wörld") and "ASSISTANT:" in out
        sent = w.requests[-1]
        assert sent["temperature"] == 0.7 and sent["max_new_tokens"] == 32 and sent["stop"] == " "
    finally:
        w.server.stop()


# --- settings / CLI ----------------------------------------------------------------------------------
def test_cli_settings(capsys):
    s = parse_settings(["--dispatch-method", "lottery", "--heart-beat-expiration", "5", "--api-key", "k"])
    assert (s.host, s.port, s.dispatch_method, s.heart_beat_expiration, s.api_key) == (
        "127.0.0.1", 21001, "lottery", 5.0, "k")
    with pytest.raises(SystemExit) as exc:
        controller_mod.main(["--help"])
    assert exc.value.code == 0 and "--dispatch-method" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        controller_mod.main(["--heart-beat-expiration", "0"])
    assert exc.value.code == 2 and "--heart-beat-expiration" in capsys.readouterr().err


# --- images ------------------------------------------------------------------------------------------
def test_image_resolution_rules(tmp_path, workers):
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    assert load_image_url(data_url).size == (8, 6)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes((5, 4)))
    for url in (str(path), path.as_uri()):
        with pytest.raises(ImageInputError) as exc:
            resolve_image_url(url)
        assert exc.value.status_code == 400 and "local file" in str(exc.value)
        assert load_image_url(url, ImagePolicy(allow_local_files=True)).size == (5, 4)
    remote = workers["a"].url + "/img.png"
    with pytest.raises(ImageInputError, match="remote"):
        resolve_image_url(remote)
    assert load_image_url(remote, ImagePolicy(allow_remote=True)).size == (8, 6)
    with pytest.raises(ImageTooLargeError) as exc:
        resolve_image_url(workers["a"].url + "/big.bin", ImagePolicy(allow_remote=True, max_bytes=1000))
    assert exc.value.status_code == 413
    with pytest.raises(ImageInputError, match="scheme"):
        resolve_image_url("ftp://host/x.png")
    # pixel limit is checked on the header, before decoding
    with pytest.raises(ImageTooLargeError, match="pixels"):
        load_image_url("data:image/png;base64," + base64.b64encode(png_bytes((300, 300))).decode(),
                       ImagePolicy(max_pixels=10_000))
    with pytest.raises(ImageTooLargeError):
        decode_base64_image(base64.b64encode(png_bytes()).decode(), ImagePolicy(max_bytes=10))
    with pytest.raises(ImageInputError) as exc:
        decode_base64_image(base64.b64encode(b"not an image").decode())
    assert exc.value.status_code == 400


# --- logging -----------------------------------------------------------------------------------------
def test_build_logger(tmp_path, capsys, monkeypatch):
    stdout, stderr = sys.stdout, sys.stderr
    root_handlers = list(logging.getLogger().handlers)
    monkeypatch.setenv("MGM_LOGDIR", str(tmp_path / "logs"))
    logger = build_logger("mgm.test.logger", "x.log")
    logger = build_logger("mgm.test.logger", "x.log")  # again: no duplicate handlers
    logger.info("hello %s", "there")
    assert sys.stdout is stdout and sys.stderr is stderr
    assert capsys.readouterr().err.count("hello there") == 1
    for h in logger.handlers:
        h.flush()
    text = (tmp_path / "logs" / "x.log").read_text(encoding="utf-8")
    assert text.count("| INFO | mgm.test.logger | hello there") == 1
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    assert logging.getLogger().handlers == root_handlers  # the root logger is left alone
