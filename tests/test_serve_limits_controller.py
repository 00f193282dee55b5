"""The controller trusts no worker (issue 21, cases 3, 4 and 7): real controllers on 127.0.0.1 against
workers that answer too much, register many times over, hijack the queue or trickle their uploads."""
from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from serving_helpers import ServerThread, start_fake

from mgm.errors import UserError
from mgm.serve.controller import ControllerSettings, beat_comes_from, create_app, parse_settings
from mgm.serve.protocol import ERROR_CONTROLLER_REQUEST, iter_chunks

pytestmark = pytest.mark.timeout(120)


def post(url: str, body=None, key: str | None = None, timeout: float = 20) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url, json=body, headers=headers, timeout=timeout, trust_env=False)


def controller(**settings) -> ServerThread:
    return ServerThread(create_app(ControllerSettings(heart_beat_expiration=30, connect_timeout=3, **settings)))


def hostile_worker(status: bytes | None = None, stream: bytes | None = None, answer: bytes | None = None) -> ServerThread:
    """A worker with a normal status unless `status` is given; its generation stream / chat answer are
    the given bytes (sent in 64 KB pieces)."""
    app = FastAPI()

    def pieces(data: bytes):
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    @app.post("/worker_get_status")
    async def get_status():
        if status is not None:
            return StreamingResponse(pieces(status), media_type="application/json")
        return {"model_names": ["m"], "speed": 1, "queue_length": 0}

    @app.post("/worker_generate_stream")
    async def generate():
        return StreamingResponse(pieces(stream or b""))

    @app.post("/v1/chat/completions")
    async def chat():
        return Response(answer or b"{}", media_type="application/json")

    return ServerThread(app)


def test_a_huge_or_crowded_status_is_refused_quickly_and_logged_in_one_short_line(caplog):
    caplog.set_level(logging.INFO)
    huge = hostile_worker(status=b'{"model_names": ["m"], "pad": "' + b"x" * (8 << 20) + b'"}')
    crowded = hostile_worker(status=json.dumps({"model_names": [f"m{i}" for i in range(5000)]}).encode())
    long_name = hostile_worker(status=json.dumps({"model_names": ["n" * 100_000]}).encode())
    negative = hostile_worker(status=json.dumps({"model_names": ["m"], "queue_length": -10**9}).encode())
    ctrl = controller()
    try:
        for worker, reason in ((huge, "limit"), (crowded, "lists 5000 models"), (long_name, "model name"),
                               (negative, "queue_length")):
            t0 = time.monotonic()
            r = post(ctrl.url + "/register_worker", {"worker_name": worker.url})
            assert r.status_code == 400 and reason in r.json()["text"], r.text[:300]
            assert time.monotonic() - t0 < 3 and len(r.content) < 2000
        assert post(ctrl.url + "/list_models").json()["models"] == []
        assert httpx.get(ctrl.url + "/health", trust_env=False).status_code == 200
        assert max(len(record.getMessage()) for record in caplog.records) < 2000
    finally:
        for server in (ctrl, huge, crowded, long_name, negative):
            server.stop()


def test_worker_streams_and_answers_are_bounded():
    ctrl = controller(max_worker_frame_bytes=1 << 20, max_worker_answer_bytes=1 << 20,
                      max_worker_stream_bytes=4 << 20)
    no_nul = hostile_worker(stream=b"x" * (32 << 20), answer=b"{" + b" " * (32 << 20) + b"}")
    try:
        assert post(ctrl.url + "/register_worker", {"worker_name": no_nul.url}).status_code == 200
        t0 = time.monotonic()
        with httpx.stream("POST", ctrl.url + "/worker_generate_stream", json={"model": "m", "prompt": "hi"},
                          timeout=20, trust_env=False) as response:
            data = b"".join(response.iter_bytes())
        chunks = list(iter_chunks([data]))
        assert len(data) < 4096 and chunks[-1]["error_code"] == ERROR_CONTROLLER_REQUEST
        assert time.monotonic() - t0 < 10
        r = post(ctrl.url + "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502 and r.json()["error"]["code"] == "worker_answer_too_large"
    finally:
        no_nul.stop()
        ctrl.stop()
    # a well-framed stream longer than the whole-stream bound is cut too
    frames = b"".join(json.dumps({"text": "y" * 60_000, "error_code": 0}).encode() + b"\0" for _ in range(200))
    ctrl = controller(max_worker_stream_bytes=2 << 20)
    chatty = hostile_worker(stream=frames)
    try:
        assert post(ctrl.url + "/register_worker", {"worker_name": chatty.url}).status_code == 200
        r = post(ctrl.url + "/worker_generate_stream", {"model": "m", "prompt": "hi"})
        chunks = list(iter_chunks([r.content]))
        assert len(r.content) < 3 << 20 and chunks[-1]["error_code"] == ERROR_CONTROLLER_REQUEST
    finally:
        chatty.stop()
        ctrl.stop()


def test_one_entry_per_worker_url_no_own_address_and_a_cap_on_workers():
    ctrl = controller(max_workers=2)
    worker = start_fake(["m"])
    other, third = start_fake(["m2"]), start_fake(["m3"])
    port = worker.server.port
    try:
        for variant in (worker.url, worker.url + "/", f"HTTP://127.0.0.1:{port}", f"http://127.0.0.1:{port}//"):
            assert post(ctrl.url + "/register_worker", {"worker_name": variant}).status_code == 200, variant
        for bad in (f"http://127.0.0.1:{port}/?a=1", f"http://u:p@127.0.0.1:{port}", f"http://127.0.0.1:{port}#f"):
            r = post(ctrl.url + "/register_worker", {"worker_name": bad})
            assert r.status_code == 400 and "query or fragment" in r.json()["text"]
        assert len(ctrl.server.config.app.state.registry) == 1
        for own in (ctrl.url, ctrl.url.replace("127.0.0.1", "localhost")):
            r = post(ctrl.url + "/register_worker", {"worker_name": own})
            assert r.status_code == 400 and "this controller" in r.json()["text"]
        assert post(ctrl.url + "/register_worker", {"worker_name": other.url}).status_code == 200
        r = post(ctrl.url + "/register_worker", {"worker_name": third.url})
        assert r.status_code == 403 and "--max-workers" in r.json()["text"]
    finally:
        for server in (ctrl, worker.server, other.server, third.server):
            server.stop()


def test_the_heart_beat_hijack_is_refused_and_the_worker_key_holder_can_deregister():
    ctrl = controller()
    real, fake = start_fake(["MGM"]), start_fake(["MGM"])
    try:
        for w in (real, fake):
            assert post(ctrl.url + "/register_worker", {"worker_name": w.url, "check_heart_beat": True}).status_code == 200
        r = post(ctrl.url + "/receive_heart_beat", {"worker_name": fake.url, "queue_length": -1_000_000_000})
        assert r.status_code == 400 and "queue_length" in r.json()["text"]
        # the fake's beats are taken as they come (>= 0): dispatch still spreads over both
        assert post(ctrl.url + "/receive_heart_beat", {"worker_name": fake.url, "queue_length": 0}).json() == \
            {"exist": True}
        chosen = [post(ctrl.url + "/get_worker_address", {"model": "MGM"}).json()["address"] for _ in range(20)]
        assert chosen.count(real.url) >= 9
        assert post(ctrl.url + "/deregister_worker", {"worker_name": fake.url + "/"}).json() == {"removed": True}
        assert post(ctrl.url + "/deregister_worker", {"worker_name": fake.url}).json() == {"removed": False}
    finally:
        for server in (ctrl, real.server, fake.server):
            server.stop()
    # a beat comes from the worker's own host (loopback for loopback workers)
    assert beat_comes_from("http://10.0.0.5:21002", "10.0.0.5")
    assert not beat_comes_from("http://10.0.0.5:21002", "10.0.0.6")
    assert not beat_comes_from("http://127.0.0.1:21002", "10.0.0.6") and beat_comes_from("http://localhost:1", "::1")
    keyed = controller(worker_api_key="wk")
    worker = start_fake(["m"])
    try:
        assert post(keyed.url + "/register_worker", {"worker_name": worker.url}, key="wk").status_code == 200
        assert post(keyed.url + "/deregister_worker", {"worker_name": worker.url}).status_code == 401
        assert post(keyed.url + "/deregister_worker", {"worker_name": worker.url}, key="wk").json() == {"removed": True}
    finally:
        keyed.stop()
        worker.server.stop()


def test_unknown_routes_and_methods_answer_in_the_routes_format():
    ctrl = controller()
    try:
        r = httpx.get(ctrl.url + "/v1/nothing", trust_env=False)
        assert r.status_code == 404 and set(r.json()) == {"error"} and r.json()["error"]["code"] == "not_found"
        r = httpx.get(ctrl.url + "/worker_generate_stream", trust_env=False)
        assert r.status_code == 405 and "error_code" in r.json() and "GET" in r.json()["text"]
        assert "detail" not in r.json()
        r = httpx.delete(ctrl.url + "/v1/chat/completions", trust_env=False)
        assert r.status_code == 405 and set(r.json()) == {"error"}
    finally:
        ctrl.stop()


def test_empty_keys_are_refused_at_start(monkeypatch):
    for kwargs in ({"api_key": ""}, {"worker_api_key": ""}):
        with pytest.raises(UserError, match="empty"):
            ControllerSettings(**kwargs)
    monkeypatch.setenv("MGM_API_KEY", "")
    with pytest.raises(UserError, match="MGM_API_KEY"):
        parse_settings([])
    monkeypatch.delenv("MGM_API_KEY")
    with pytest.raises(UserError, match="empty"):
        parse_settings(["--api-key", ""])
    from mgm.serve.gradio_web_server import WebSettings
    from mgm.serve.worker_settings import WorkerSettings

    with pytest.raises(UserError, match="empty"):
        WorkerSettings(api_key="")
    with pytest.raises(UserError, match="empty"):
        WebSettings(api_key="")


def _raw_upload(port: int, declared: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /get_worker_address HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + body)
    return sock


def test_slow_uploads_time_out_and_aborted_ones_log_one_info_line(caplog):
    caplog.set_level(logging.INFO)
    ctrl = controller(body_timeout=1.0)
    try:
        t0 = time.monotonic()
        sock = _raw_upload(ctrl.port, 1000, b"{")
        answer = b""
        while piece := sock.recv(65536):  # the server closes the connection after its answer
            answer += piece
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in answer
        assert time.monotonic() - t0 < 5
        for _ in range(3):  # clients that go away in the middle of their body
            sock = _raw_upload(ctrl.port, 100_000, b"{" * 1000)
            sock.close()
        time.sleep(0.5)
        assert httpx.get(ctrl.url + "/health", trust_env=False).status_code == 200
    finally:
        ctrl.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("disconnected" in r.getMessage() or "not received in time" in r.getMessage() for r in caplog.records)


def test_bounds_have_flags():
    s = parse_settings(["--max-workers", "3", "--max-worker-answer-bytes", "10", "--max-worker-frame-bytes", "11",
                        "--max-worker-stream-bytes", "12", "--body-timeout", "2.5"])
    assert (s.max_workers, s.max_worker_answer_bytes, s.max_worker_frame_bytes, s.max_worker_stream_bytes,
            s.body_timeout) == (3, 10, 11, 12, 2.5)
    with pytest.raises(UserError, match="--max-workers"):
        ControllerSettings(max_workers=0)


def test_the_controller_refuses_what_every_worker_of_the_model_would_without_forwarding_it():
    status = {"model_names": ["m"], "max_stop_strings": 2, "max_stop_chars": 8, "max_images": 1}
    worker = hostile_worker(status=json.dumps(status).encode(), answer=b'{"not": "used"}')
    ctrl = controller()
    try:
        assert post(ctrl.url + "/register_worker", {"worker_name": worker.url}).status_code == 200
        base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        t0 = time.monotonic()
        r = post(ctrl.url + "/v1/chat/completions", {**base, "stop": [f"s{i}" for i in range(20_000)]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop" and time.monotonic() - t0 < 3
        r = post(ctrl.url + "/v1/chat/completions", {**base, "stop": ["x" * 9]})
        assert r.status_code == 400 and "characters" in r.json()["error"]["message"]
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        r = post(ctrl.url + "/v1/chat/completions", {**base, "messages": [{"role": "user", "content": [image] * 2}]})
        assert r.status_code == 400 and "images" in r.json()["error"]["message"]
        assert post(ctrl.url + "/v1/chat/completions", {**base, "stop": ["a", "b"]}).status_code == 200  # forwarded
    finally:
        worker.stop()
        ctrl.stop()
