"""Who may register workers with the controller, what the controller believes, which hosts it contacts
and which keys it sends where: real controllers on 127.0.0.1 against fake workers (no model needed)."""
from __future__ import annotations

import time

import httpx
import openai
import pytest
from serving_helpers import ServerThread, start_fake

from mgm.errors import UserError
from mgm.serve.controller import ControllerSettings, create_app, parse_settings
from mgm.serve.protocol import ERROR_BAD_REQUEST
from mgm.serve.worker_registry import WorkerHostPolicy

pytestmark = pytest.mark.timeout(60)
PERIOD = 1.0  # heart-beat expiration of the test controllers (seconds)


def post(url: str, body=None, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url, json=body, headers=headers, timeout=10, trust_env=False)


def controller(**settings) -> ServerThread:
    return ServerThread(create_app(ControllerSettings(heart_beat_expiration=PERIOD, heart_beat_check_interval=0.1,
                                                      connect_timeout=2, **settings)))


def models(url: str, key: str | None = None) -> list[str]:
    return post(url + "/list_models", key=key).json()["models"]


def test_the_reported_hijack_is_refused_and_a_silent_worker_is_dropped_within_one_period():
    """The issue's attack: a client registers a fake worker with a made-up status and no heart beats."""
    ctrl = controller(api_key="client-key", worker_api_key="worker-key")
    real, fake = start_fake(["MGM-7B"]), start_fake(["fake"])
    hijack = {"worker_name": fake.url, "check_heart_beat": False,
              "worker_status": {"model_names": ["MGM-7B"], "speed": 1_000_000, "queue_length": 0}}
    try:
        for key in (None, "client-key", "wrong"):  # unauthenticated, or with the clients' key: refused
            r = post(ctrl.url + "/register_worker", hijack, key=key)
            assert r.status_code == 401 and r.json()["error_code"] == ERROR_BAD_REQUEST
            assert "worker key" in r.json()["text"]
        assert fake.auth == [] and models(ctrl.url, "client-key") == []  # the fake was never even contacted
        assert post(ctrl.url + "/receive_heart_beat", {"worker_name": real.url}, key="client-key").status_code == 401

        # with the worker key: the controller asks the worker itself, the sent status is ignored
        assert post(ctrl.url + "/register_worker", hijack, key="worker-key").status_code == 200
        assert models(ctrl.url, "client-key") == ["fake"]  # not "MGM-7B" with speed 1e6
        assert post(ctrl.url + "/register_worker", {"worker_name": real.url, "check_heart_beat": True},
                    key="worker-key").status_code == 200
        assert fake.auth[-1] == "Bearer worker-key"  # the verification carried the worker key ...

        # a client's request reaches the real worker with the worker key, never with the client's key
        client = openai.OpenAI(base_url=ctrl.url + "/v1", api_key="client-key", max_retries=0, timeout=10)
        out = client.chat.completions.create(model="MGM-7B", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content == f"{real.url} says: hi"
        assert "Bearer client-key" not in real.auth and real.auth[-1] == "Bearer worker-key"

        # the fake stops answering: dropped within one period, though it asked for no heart-beat check
        fake.server.stop()
        t0 = time.monotonic()
        while "fake" in models(ctrl.url, "client-key"):
            assert time.monotonic() - t0 < PERIOD, "a worker that stopped answering was kept"
            time.sleep(0.05)
        # the real one registered with heart beats and sends none: gone after one period too
        while "MGM-7B" in models(ctrl.url, "client-key"):
            assert time.monotonic() - t0 < PERIOD + 0.5, "a worker without heart beats was kept"
            time.sleep(0.05)
    finally:
        for server in (ctrl, real.server, fake.server):
            server.stop()


def test_registration_is_disabled_beyond_loopback_without_a_worker_key():
    worker = start_fake(["m"])
    # host says where main() would bind: 0.0.0.0 without --worker-api-key refuses every registration
    ctrl = controller(host="0.0.0.0", api_key="client-key")
    try:
        r = post(ctrl.url + "/register_worker", {"worker_name": worker.url}, key="client-key")
        assert r.status_code == 403 and "--worker-api-key" in r.json()["text"]
        assert worker.auth == []
    finally:
        ctrl.stop()
        worker.server.stop()


def test_open_registration_contacts_loopback_hosts_only_and_the_allow_list_binds():
    loopback_only = controller()  # no worker key, bound to loopback: open, for loopback workers
    listed = controller(worker_api_key="wk", worker_allow_hosts=("127.0.0.1", "10.0.0.0/8"))
    worker = start_fake(["m"])
    try:
        for url in ("http://192.0.2.7:8000", "http://example.com", "http://10.1.2.3:80"):
            t0 = time.monotonic()
            r = post(loopback_only.url + "/register_worker", {"worker_name": url})
            assert r.status_code == 400 and "not allowed" in r.json()["text"] and time.monotonic() - t0 < 1
        assert post(loopback_only.url + "/register_worker", {"worker_name": worker.url}).status_code == 200
        # the allow-list: names are not resolved (localhost is not 127.0.0.1), networks match
        r = post(listed.url + "/register_worker", {"worker_name": worker.url.replace("127.0.0.1", "localhost")},
                 key="wk")
        assert r.status_code == 400 and "--worker-allow-hosts" in r.json()["text"]
        assert post(listed.url + "/register_worker", {"worker_name": worker.url}, key="wk").status_code == 200
        for bad in ("ftp://127.0.0.1:1", "http://", "http://127.0.0.1:99999"):
            assert post(listed.url + "/register_worker", {"worker_name": bad}, key="wk").status_code == 400
    finally:
        for server in (loopback_only, listed, worker.server):
            server.stop()
    policy = WorkerHostPolicy(("gpu-1", "10.0.0.0/8"))
    assert policy.check("http://GPU-1:21002/") == "http://gpu-1:21002"  # one entry per scheme/host/port/path
    assert policy.check("http://10.9.8.7:1") and pytest.raises(Exception, policy.check, "http://11.0.0.1:1")


def test_keys_must_differ_and_flags_are_checked():
    with pytest.raises(UserError, match="must differ"):
        ControllerSettings(api_key="same", worker_api_key="same")
    with pytest.raises(UserError, match="--worker-allow-hosts"):
        parse_settings(["--worker-allow-hosts", "10.0.0.0/99"])
    s = parse_settings(["--worker-api-key", "w", "--worker-allow-hosts", "gpu-1, 10.0.0.0/8"])
    assert s.worker_allow_hosts == ("gpu-1", "10.0.0.0/8") and not s.registration_open
    assert ControllerSettings().registration_open and not ControllerSettings(host="0.0.0.0").registration_open


def test_a_real_worker_registers_with_the_worker_key(tmp_path_factory):
    """The worker's --api-key is the worker key: it registers and beats with it, and the controller
    reaches it with it (the worker refuses anyone else)."""
    from serving_helpers import build_zoo, load_engine, make_worker, model_path, start_worker

    engine, conv_mode = load_engine(model_path(build_zoo(tmp_path_factory)))
    ctrl = controller(api_key="client-key", worker_api_key="worker-key")
    w = make_worker(engine, conv_mode, controller=ctrl.url, api_key="worker-key", heart_beat_interval=0.3)
    server = start_worker(w)
    try:
        assert models(ctrl.url, "client-key") == [w.model_name]
        time.sleep(PERIOD + 0.3)  # beats keep it registered past the expiration
        assert models(ctrl.url, "client-key") == [w.model_name]
        client = openai.OpenAI(base_url=ctrl.url + "/v1", api_key="client-key", max_retries=0, timeout=30)
        out = client.chat.completions.create(model=w.model_name, max_tokens=2, temperature=0,
                                             messages=[{"role": "user", "content": "hi"}])
        assert out.usage.completion_tokens >= 1
        assert httpx.post(server.url + "/worker_get_status", trust_env=False).status_code == 401
    finally:
        server.stop()
        ctrl.stop()
