"""The Gradio web demo: unit checks of its helpers, and a real headless browser (Debian chromium driven by
playwright, no browser download) against controller + worker + web server on 127.0.0.1: upload an image,
ask, watch the answer stream, see a generated picture in the chat, stop a stream, and the notice shown when
no worker is up. A screenshot of each page is saved under tests/artifacts/ (git-ignored).
Without /usr/bin/chromium (MGM_CHROMIUM overrides the path) the browser tests skip, or fail when
MGM_REQUIRE_BROWSER=1 (CI installs chromium and sets it)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from serving_helpers import (
    TINY_MODEL,
    ServerThread,
    build_zoo,
    free_port,
    load_engine,
    make_worker,
    model_path,
    start_worker,
)

from mgm.conversation import conv_templates
from mgm.errors import UserError
from mgm.inference import batcher as batcher_mod
from mgm.serve.controller import ControllerSettings, create_app as controller_app
from mgm.serve.engine import RowResult
from mgm.serve.gradio_web_server import (
    CURSOR,
    EXAMPLES,
    EXAMPLES_DIR,
    ChatSession,
    WebSettings,
    launch,
    parse_settings,
    sort_models,
    template_for_model_name,
)

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("MGM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


# --- helpers without a browser -----------------------------------------------------------------------
def test_examples_are_bundled():
    for name, text in EXAMPLES:
        image = Image.open(EXAMPLES_DIR / name)
        assert image.size[0] >= 256 and text


def test_settings_and_flags():
    s = parse_settings(["--controller-url", "http://127.0.0.1:10000", "--model-list-mode", "reload"])
    assert (s.host, s.controller_url, s.model_list_mode, s.concurrency_count) == \
        ("127.0.0.1", "http://127.0.0.1:10000", "reload", 16)
    with pytest.raises(UserError, match="--controller-url"):
        WebSettings(controller_url="localhost:21001")


def test_template_fallback_and_model_order():
    assert template_for_model_name("MGM-8x7B-HD") == "mistral_instruct"
    assert template_for_model_name("MGM-34B") == "chatml_direct"
    assert template_for_model_name("MGM-2B") == "gemma"
    assert template_for_model_name("MGM-7B") == "vicuna_v1"
    assert template_for_model_name("MGM-8B-HD") == "llama_3"  # the original fell back to vicuna_v1 here
    assert sort_models(["zeta", "MGM-7B", "MGM-34B-HD", "alpha", "MGM-7B"]) == ["MGM-34B-HD", "MGM-7B", "alpha", "zeta"]


def test_chat_session_renders_gradio_messages():
    session = ChatSession(conv=conv_templates["vicuna_v1"].copy())
    session.conv.append_message("USER", ("What is it?\n<image>", Image.new("RGB", (4, 4)), "Default"))
    session.conv.append_message("ASSISTANT", ("A car.", "b64"))
    session.images = {0: "/tmp/in.jpg", 1: "/tmp/gen_out.jpg"}
    session.conv.append_message("USER", "More?")
    session.conv.append_message("ASSISTANT", None)
    assert session.chatbot() == [
        {"role": "user", "content": [{"path": "/tmp/in.jpg"}, "What is it?"]},
        {"role": "assistant", "content": ["A car.", {"path": "/tmp/gen_out.jpg"}]},
        {"role": "user", "content": "More?"},
    ]


# --- the browser -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"no chromium at {CHROMIUM}: install it with `apt-get install -y chromium` to run the browser tests"
        if os.environ.get("MGM_REQUIRE_BROWSER") == "1":  # CI sets this: a missing browser is a failure there
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, chromium_sandbox=False, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


class StubPipe:
    """Stands in for a diffusers pipeline: always the same green picture."""

    def __call__(self, **kwargs):
        return SimpleNamespace(images=[Image.new("RGB", (48, 48), (20, 160, 60))])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    engine, conv_mode = load_engine(model_path(build_zoo(tmp_path_factory)))
    ctrl = ServerThread(controller_app(ControllerSettings()))
    # window batching: the tests that fake the model patch its generate_rows
    worker = make_worker(engine, conv_mode, controller=ctrl.url, heart_beat_interval=1, batching="window")
    worker.pipe = StubPipe()
    worker_server = start_worker(worker)
    log_dir = tmp_path_factory.mktemp("web_logs")
    port = free_port()
    demo = launch(WebSettings(controller_url=ctrl.url, port=port, log_dir=str(log_dir)),
                  prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", worker=worker, log_dir=log_dir, controller=ctrl)
    demo.close()
    worker_server.stop()
    ctrl.stop()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#send-btn", timeout=60_000)
    return page


def bot_texts(page) -> list[str]:
    return page.locator("#chatbot [data-testid=bot]").all_inner_texts()


def wait_answer(page, timeout: float = 60) -> tuple[str, list[str]]:
    """Poll the assistant's answer (each test page holds one) until the cursor is gone.

    Returns (final text, snapshots seen). An answer with a picture is several bot elements; their
    texts are joined.
    """
    snapshots: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "\n".join(t for t in bot_texts(page) if t.strip())
        if text:
            if not snapshots or snapshots[-1] != text:
                snapshots.append(text)
            if CURSOR not in text:
                return text, snapshots
        time.sleep(0.05)
    raise AssertionError(f"no finished answer after {timeout} s; last: {snapshots[-1:] or 'nothing'}")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=False)


def slow_generation(monkeypatch, text: str, delay: float = 0.0) -> list:
    """A window-mode batcher 'generates' `text` word by word (delay s apart), honouring cancellation."""
    seen: list = []

    def generate_rows(engine, requests, on_text=None, cancelled=None, on_done=None):
        results = []
        for i, request in enumerate(requests):
            seen.append(request)
            result = RowResult(finish_reason="stop")
            for word in text.split(" "):
                if cancelled is not None and cancelled(i):
                    result.finish_reason = "cancelled"
                    break
                piece = word + " "
                result.text += piece
                result.completion_tokens += 1
                on_text(i, piece)
                time.sleep(delay)
            results.append(result)
            if on_done is not None:
                on_done(i, result)
        return results

    monkeypatch.setattr(batcher_mod, "generate_rows", generate_rows)
    return seen


def test_upload_ask_and_watch_the_answer_stream(browser, stack):
    page = open_page(browser, stack.url + f"/?model={TINY_MODEL}")
    assert page.locator("#model-selector input").input_value() == TINY_MODEL
    assert not page.locator("#no-worker-notice").is_visible()
    page.set_input_files("#imagebox input[type=file]", str(EXAMPLES_DIR / "waterview.jpg"))
    page.fill("#textbox textarea", "What is in this picture?")
    page.click("#send-btn")
    answer, snapshots = wait_answer(page)
    screenshot(page, "gradio_chat.png")
    assert answer.strip() and "error_code" not in answer
    assert any(CURSOR in s for s in snapshots)  # the answer was shown while it streamed
    user = page.locator("#chatbot [data-testid=user]")
    assert "What is in this picture?" in " ".join(user.all_inner_texts())
    assert page.locator("#chatbot [data-testid=user] img").count() == 1  # the uploaded image is in the chat
    records = list(Path(stack.log_dir).glob("*-conv.json"))
    assert records and '"type": "chat"' in records[0].read_text()
    page.close()


def test_generated_picture_is_shown_in_the_chat(browser, stack, monkeypatch):
    requests = slow_generation(monkeypatch, "Here it is. <h>a green field</h>")
    page = open_page(browser, stack.url)
    page.locator("#gen-image label", has_text="Yes").click()
    page.set_input_files("#imagebox input[type=file]", str(EXAMPLES_DIR / "monday.jpg"))
    page.fill("#textbox textarea", "Draw the weekend.")
    page.click("#send-btn")
    answer, _ = wait_answer(page)
    page.locator("#chatbot [data-testid=bot] img").first.wait_for(timeout=30_000)
    screenshot(page, "gradio_generated_image.png")
    assert "Prompt: a green field" in answer
    assert requests and " <GEN> ASSISTANT:" in requests[-1].prompt
    page.close()


def test_stop_ends_the_stream(browser, stack, monkeypatch):
    requests = slow_generation(monkeypatch, " ".join(f"w{i}" for i in range(400)), delay=0.05)
    page = open_page(browser, stack.url)
    page.fill("#textbox textarea", "Count for me.")
    page.click("#send-btn")
    deadline = time.monotonic() + 30
    while not any("w3" in t for t in bot_texts(page)) and time.monotonic() < deadline:
        time.sleep(0.05)
    page.click("#stop-btn")
    deadline = time.monotonic() + 15
    while stack.worker.queue_length and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.worker.queue_length == 0  # the worker dropped the request
    time.sleep(0.5)
    text = "\n".join(bot_texts(page))
    assert "w3" in text and "w399" not in text and CURSOR not in text
    assert len(requests) == 1
    page.close()


def test_a_clear_notice_when_no_worker_is_up(browser, tmp_path):
    ctrl = ServerThread(controller_app(ControllerSettings()))
    port = free_port()
    demo = launch(WebSettings(controller_url=ctrl.url, port=port, log_dir=str(tmp_path)),
                  prevent_thread_lock=True, quiet=True)
    try:
        page = open_page(browser, f"http://127.0.0.1:{port}")
        notice = page.locator("#no-worker-notice")
        notice.wait_for(state="visible", timeout=30_000)
        assert "No model worker is available" in notice.inner_text()
        page.fill("#textbox textarea", "Hello?")
        page.click("#send-btn")
        answer, _ = wait_answer(page, timeout=30)
        assert "No model worker is available" in answer
        screenshot(page, "gradio_no_worker.png")
        page.close()
    finally:
        demo.close()
        ctrl.stop()
