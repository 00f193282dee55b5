"""The OpenAI-compatible API of the worker (and the controller's /v1 proxy), driven by the official `openai`
client against real servers on 127.0.0.1, plus the prompt rendering of chat messages per template."""
from __future__ import annotations

import base64

import httpx
import openai
import pytest
from serving_helpers import (
    TINY_MODEL,
    ServerThread,
    build_zoo,
    data_url,
    image_bytes,
    load_engine,
    make_worker,
    model_path,
    start_worker,
)

from mgm.conversation import get_template
from mgm.serve.controller import ControllerSettings, create_app as controller_app
from mgm.serve.engine import GenerationParams, Request, request_token_count
from mgm.serve.openai_api import messages_to_prompt
from mgm.serve.openai_protocol import ChatMessage
from mgm.serve.protocol import RequestError
from mgm.serve.security import decode_base64_image

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_engine(model_path(build_zoo(tmp_path_factory)))


@pytest.fixture(scope="module")
def servers(loaded, tmp_path_factory):
    engine, conv_mode = loaded
    ctrl = ServerThread(controller_app(ControllerSettings()))
    w = make_worker(engine, conv_mode, controller=ctrl.url, max_image_pixels=256 * 256, heart_beat_interval=1)
    worker = start_worker(w)
    yield ctrl, worker, w
    worker.stop()
    ctrl.stop()


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60,
                         http_client=httpx.Client(trust_env=False))


def image_message(text: str, url: str | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url or data_url()}}]}]


def expected_greedy(engine, conv_mode: str, text: str, max_tokens: int) -> tuple[str, int]:
    prompt, images = messages_to_prompt([ChatMessage.model_validate(m) for m in image_message(text)], conv_mode,
                                        lambda url, what: decode_base64_image(url, mode="RGB"))
    request = Request(prompt, images, GenerationParams(temperature=0, max_new_tokens=max_tokens))
    return engine.generate([request])[0], request_token_count(engine, request)


# --- prompt rendering --------------------------------------------------------------------------------
def _msgs(*pairs) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in pairs]


def _no_images(url, what):
    raise AssertionError("no images expected")


def test_messages_render_with_the_template_like_a_conversation():
    conv = get_template("vicuna_v1")
    conv.system = "Be brief."
    conv.append_message("USER", "Hi")
    conv.append_message("ASSISTANT", "Hello!")
    conv.append_message("USER", "How are you?\nAnd today?")
    conv.append_message("ASSISTANT", None)
    prompt, images = messages_to_prompt(_msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                                              ("user", "How are you?"), ("user", "And today?")), "vicuna_v1", _no_images)
    assert prompt == conv.get_prompt() and images == []


@pytest.mark.parametrize("template,expected_start", [
    ("llama_3", "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"),
    ("chatml_direct", "<|im_start|>system\nBe brief.<|im_end|>"),
    ("gemma", "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"),  # gemma has no system turn
    ("mistral_instruct", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"),
])
def test_system_text_goes_where_each_template_keeps_it(template, expected_start):
    prompt, _ = messages_to_prompt(_msgs(("system", "Be brief."), ("user", "Hi")), template, _no_images)
    assert prompt.startswith(expected_start)


def test_images_become_image_tags_numbered_when_several():
    from PIL import Image

    loaded = []

    def load(url, what):
        loaded.append(url)
        return Image.new("RGB", (4, 4))

    msgs = [ChatMessage.model_validate({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:a"}}, {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:b"}}]})]
    prompt, images = messages_to_prompt(msgs, "vicuna_v1", load)
    assert loaded == ["data:a", "data:b"] and len(images) == 2
    assert "USER: Image 1:<image>\nImage 2:<image>\nCompare ASSISTANT:" in prompt
    one, _ = messages_to_prompt([ChatMessage.model_validate(image_message("What?", "data:x")[0])], "vicuna_v1", load)
    assert "USER: <image>\nWhat? ASSISTANT:" in one


def test_bad_conversations_are_refused():
    with pytest.raises(RequestError, match="last message"):
        messages_to_prompt(_msgs(("user", "Hi"), ("assistant", "Yo")), "vicuna_v1", _no_images)
    with pytest.raises(RequestError, match="start with a user"):
        messages_to_prompt(_msgs(("assistant", "Yo"), ("user", "Hi")), "vicuna_v1", _no_images)
    with pytest.raises(RequestError, match="tags"):
        messages_to_prompt([ChatMessage.model_validate(image_message("<image> <image> two tags")[0])],
                           "vicuna_v1", lambda u, w: None)


# --- the official client -----------------------------------------------------------------------------
def test_models_list(servers):
    ctrl, worker, _ = servers
    assert [m.id for m in client(worker.url).models.list()] == [TINY_MODEL]
    assert [m.id for m in client(ctrl.url).models.list()] == [TINY_MODEL]


def test_chat_completion_with_an_image(servers, loaded):
    engine, conv_mode = loaded
    _, worker, _ = servers
    answer, prompt_tokens = expected_greedy(engine, conv_mode, "What is in the image?", 12)
    response = client(worker.url).chat.completions.create(
        model=TINY_MODEL, messages=image_message("What is in the image?"), max_tokens=12, temperature=0)
    assert response.object == "chat.completion" and response.model == TINY_MODEL
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content.strip() == answer
    assert response.usage.prompt_tokens == prompt_tokens > engine.num_image_tokens()
    assert 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == prompt_tokens + response.usage.completion_tokens
    assert response.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("via", ["worker", "controller"])
def test_streaming_gives_the_same_text_as_non_streaming(servers, via):
    ctrl, worker, _ = servers
    c = client(worker.url if via == "worker" else ctrl.url)
    kwargs = dict(model=TINY_MODEL, messages=image_message("Describe it."), max_tokens=10, temperature=0)
    full = c.chat.completions.create(**kwargs)
    pieces, finish, usage, ids = [], None, None, set()
    for chunk in c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == full.choices[0].message.content
    assert len(ids) == 1 and finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens and usage.prompt_tokens == full.usage.prompt_tokens


def test_max_tokens_stop_and_sampling_parameters(servers):
    _, worker, _ = servers
    c = client(worker.url)
    short = c.chat.completions.create(model=TINY_MODEL, messages=[{"role": "user", "content": "Tell a story."}],
                                      max_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    long = c.chat.completions.create(model=TINY_MODEL, messages=[{"role": "user", "content": "Tell a story."}],
                                     max_tokens=24, temperature=0).choices[0].message.content
    stop = long.strip()[4:7]
    stopped = c.chat.completions.create(model=TINY_MODEL, messages=[{"role": "user", "content": "Tell a story."}],
                                        max_tokens=24, temperature=0, stop=[stop])
    assert stopped.choices[0].message.content == long[:long.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    sampled = c.chat.completions.create(model=TINY_MODEL, messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=5, temperature=0.9, top_p=0.8)
    assert sampled.usage.completion_tokens >= 1


# --- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["worker", "controller"])
def test_unknown_model_is_404(servers, via):
    ctrl, worker, _ = servers
    with pytest.raises(openai.NotFoundError) as err:
        client(worker.url if via == "worker" else ctrl.url).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 404 and "no-such-model" in str(err.value)


def test_malformed_json_and_bad_fields_are_400(servers):
    _, worker, _ = servers
    r = httpx.post(worker.url + "/v1/chat/completions", content=b"{oops",
                   headers={"content-type": "application/json"}, trust_env=False)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(worker.url + "/v1/chat/completions", json={"model": TINY_MODEL, "messages": []}, trust_env=False)
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_corrupt_oversized_and_disallowed_images(servers):
    _, worker, _ = servers
    c = client(worker.url)
    corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=TINY_MODEL, messages=image_message("Hi", corrupt))
    assert err.value.status_code == 400 and "image" in str(err.value)
    big = "data:image/png;base64," + base64.b64encode(image_bytes((400, 400))).decode()
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model=TINY_MODEL, messages=image_message("Hi", big))
    assert err.value.status_code == 413
    for url in ("http://127.0.0.1:9/cat.png", "/etc/hostname", "file:///etc/hostname"):
        with pytest.raises(openai.BadRequestError, match="not allowed"):
            c.chat.completions.create(model=TINY_MODEL, messages=image_message("Hi", url))


def test_local_files_with_the_flag_and_api_key(loaded, tmp_path):
    engine, conv_mode = loaded
    path = tmp_path / "red.png"
    path.write_bytes(image_bytes())
    w = make_worker(engine, conv_mode, allow_local_images=True, api_key="s3cret")
    server = start_worker(w)
    try:
        with pytest.raises(openai.AuthenticationError):
            client(server.url).chat.completions.create(model=TINY_MODEL, messages=[{"role": "user", "content": "Hi"}])
        response = client(server.url, "s3cret").chat.completions.create(
            model=TINY_MODEL, messages=image_message("Hi", str(path)), max_tokens=3, temperature=0)
        assert response.usage.prompt_tokens > engine.num_image_tokens()
        assert httpx.post(server.url + "/worker_get_status", trust_env=False).status_code == 401
        assert httpx.get(server.url + "/health", trust_env=False).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("via", ["worker", "controller"])
def test_fields_this_server_cannot_honour_are_refused_by_name(servers, via):
    ctrl, worker, _ = servers
    c = client(worker.url if via == "worker" else ctrl.url)
    msgs = [{"role": "user", "content": "Hi"}]
    refused = [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1.0}, "frequency_penalty"),
        ({"seed": 3, "temperature": 0.8}, "seed"),
    ]
    for extra, field in refused:
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model=TINY_MODEL, messages=msgs, max_tokens=2, **extra)
        assert err.value.body["param"] == field and f"`{field}`" in err.value.body["message"]
    # their "off" values, and a seed with greedy decoding, are fine
    ok = c.chat.completions.create(model=TINY_MODEL, messages=msgs, max_tokens=2, temperature=0, seed=3,
                                   response_format={"type": "text"}, logprobs=False, presence_penalty=0,
                                   frequency_penalty=0.0, tool_choice="none", user="someone")
    assert ok.usage.completion_tokens >= 1
    model = c.models.retrieve(TINY_MODEL)
    assert model.id == TINY_MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


@pytest.mark.parametrize("via", ["worker", "controller"])
def test_bodies_that_are_not_valid_json_text_are_400_in_the_openai_shape(servers, via):
    ctrl, worker, _ = servers
    url = (worker.url if via == "worker" else ctrl.url) + "/v1/chat/completions"
    head = b'{"model": "' + TINY_MODEL.encode() + b'", "messages": [{"role": "user", "content": '
    for raw, named in [(head + b'"hi \\udcff"}]}', "surrogate"),  # the lone surrogate
                       (head + b"[" * 50_000 + b"]" * 50_000 + b"}]}", "recursion"),
                       (head + b'"caf\xe9"}]}', "unicode")]:  # Latin-1, not UTF-8
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, trust_env=False, timeout=30)
        assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
        assert named in r.json()["error"]["message"].lower()
    # a valid surrogate pair (an emoji, as ensure_ascii JSON writes it) is fine
    r = httpx.post(url, content=head + b'"hi \\ud83d\\ude00"}], "max_tokens": 2}',
                   headers={"content-type": "application/json"}, trust_env=False, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("via", ["worker", "controller"])
def test_prompts_over_the_context_are_refused_before_tokenising(servers, via):
    ctrl, worker, w = servers
    registry = ctrl.server.config.app.state.registry
    assert registry.workers[worker.url].max_prompt_chars == w.max_prompt_chars  # learnt from the status
    url = (worker.url if via == "worker" else ctrl.url) + "/v1/chat/completions"
    over = w.max_prompt_chars + 1
    for text, named in [("x" * over, f"{over} characters"),  # parsed, then counted
                        ("x" * (13 * over + 70_000), "without any image")]:  # refused before parsing
        r = httpx.post(url, json={"model": TINY_MODEL, "messages": [{"role": "user", "content": text}]},
                       trust_env=False, timeout=30)
        assert r.status_code == 400 and named in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"] == "messages"
