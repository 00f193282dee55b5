"""The web demo: a Gradio chat page in front of the controller and its model workers (docs/original.md#serving).

    python -m mgm.serve.gradio_web_server --controller-url http://127.0.0.1:21001 --model-list-mode reload

The page lists the models the controller knows, takes an image and a question, and streams the
answer from a worker (the original NUL-delimited protocol). It has regenerate / clear / stop buttons,
the bundled examples (mgm/serve/examples/), temperature / top-p / max-output-tokens sliders, an OCR
toggle and an image-generation toggle (generated pictures appear in the chat), upvote / downvote /
flag buttons, and a clear notice when no worker is up. Runs on Gradio 6 (messages-format Chatbot).

Changes from the original: binds to 127.0.0.1 unless `--host` says otherwise; image generation only
when the toggle says so (the original also switched it on whenever the prompt contained "generate",
and for one example, docs/original.md#fixed-defects); the template comes from the worker's status (its model config), with
the original's name rules only as a fallback; logs go to `<log dir>/gradio_web_server.log` and the
chat records to `<log dir>/YYYY-MM-DD-conv.json` (JSON lines) without replacing stdout/stderr; uploaded
and generated images are kept under `<log dir>/serve_images/YYYY-MM-DD/`.
"""
from __future__ import annotations

# ruff: noqa: E402 -- the imports below come after the early argument parse on purpose
from mgm.serve.web_args import build_parser

if __name__ == "__main__":
    # Run as a program: `--help` and flag errors answer here, before gradio loads below (seconds).
    build_parser().parse_args()

import base64
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
from PIL import Image

from mgm.conversation import conv_templates
from mgm.errors import UserError, exit_on_user_error
from mgm.serve.demo_auth import resolve_demo_auth
from mgm.serve.logging_utils import build_logger, get_logdir
from mgm.serve.protocol import MODERATION_MSG, SERVER_ERROR_MSG, iter_chunks
from mgm.serve.security import auth_headers
from mgm.serve.web_session import (  # noqa: F401 (re-exported: the demo's chat state and helpers)
    ChatSession,
    conv_log_file,
    save_image,
    template_for_model_name,
    violates_moderation,
)

LOGGER_NAME = "mgm.serve.gradio_web_server"
TITLE = "Mini-Gemini: Mining the Potential of Multi-modality Vision Language Models"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLES = [
    ("monday.jpg", "Explain why this meme is funny, and generate a picture when the weekend coming."),
    ("woolen.png", "Show me one idea of what I could make with this?"),
    ("extreme_ironing.jpg", "What is unusual about this image?"),
    ("waterview.jpg", "What are the things I should be cautious about when I visit here?"),
]
CURSOR = "▌"
MAX_PROMPT_CHARS = 1536  # the original cut the text to 1536 characters (1200 with an image)
MAX_PROMPT_CHARS_WITH_IMAGE = 1200
MAX_NEW_TOKENS_LIMIT = 1536
NETWORK_ERROR_CODE = 4  # the original's code for a failed request to the worker
MODEL_PRIORITY = {"MGM-34B-HD": "aaaaaaa", "MGM-8x7B-HD": "aaaaaab", "MGM-13B-HD": "aaaaaac",
                  "MGM-7B-HD": "aaaaaad", "MGM-34B": "aaaaaae", "MGM-8x7B": "aaaaaaf", "MGM-13B": "aaaaaag",
                  "MGM-7B": "aaaaaah", "MGM-2B": "aaaaaai"}

TOS_MARKDOWN = """
### Terms of use
By using this service, users agree to the following: it is a research preview for non-commercial use only.
It has only limited safety measures and may produce offensive content. Do not use it for illegal, harmful,
violent, racist or sexual purposes. Conversations may be recorded for research.
"""
LEARN_MORE_MARKDOWN = """
### License
The service is a research preview intended for non-commercial use only, subject to the model licenses of the
underlying language models and of the data used to train them.
"""


def no_worker_notice(controller_url: str) -> str:
    return (f"**No model worker is available.** The controller at {controller_url} has no live worker. "
            "Start one, e.g. `python -m mgm.serve.model_worker --controller " + controller_url +
            " --port 21002 --worker http://127.0.0.1:21002 --model-path <checkpoint>`, then reload this page.")


# --- talking to the controller and workers -----------------------------------------------------------
@dataclass(frozen=True)
class WebSettings:
    """Everything the web server needs; the CLI flags map onto these fields."""

    controller_url: str = "http://127.0.0.1:21001"
    host: str = "127.0.0.1"
    port: int | None = None
    share: bool = False
    concurrency_count: int = 16
    model_list_mode: str = "once"
    moderate: bool = False
    embed: bool = False
    api_key: str | None = None  # sent to the controller (its --api-key)
    worker_api_key: str | None = None  # sent to the workers it streams from (their --api-key); None = api_key
    request_timeout: float = 30.0  # seconds between two stream chunks before giving up
    log_dir: str | None = None
    demo_auth: str | None = None  # user:password, a file of them, or "none" (mgm.serve.demo_auth)

    def __post_init__(self) -> None:
        if self.model_list_mode not in ("once", "reload"):
            raise UserError(f"--model-list-mode {self.model_list_mode!r} must be once or reload")
        if not self.controller_url.startswith(("http://", "https://")):
            raise UserError(f"--controller-url {self.controller_url!r} must be an http(s) URL")
        if self.concurrency_count < 1:
            raise UserError(f"--concurrency-count must be >= 1, got {self.concurrency_count}")
        for flag, key in (("--api-key", self.api_key), ("--worker-api-key", self.worker_api_key)):
            if key == "":  # an empty key must not quietly mean "no key"
                raise UserError(f"{flag} (or its environment variable) is empty: give a key, or leave it out")


def sort_models(models: list[str]) -> list[str]:
    """The original's order: the released MGM models first (largest first), then alphabetical."""
    return sorted(dict.fromkeys(models), key=lambda name: MODEL_PRIORITY.get(name, name))


class Backend:
    """HTTP calls to the controller and workers (short timeouts; errors become empty answers, logged)."""

    def __init__(self, settings: WebSettings, logger: logging.Logger) -> None:
        self.settings = settings
        self.controller = settings.controller_url.rstrip("/")
        self.logger = logger
        self.headers = auth_headers(settings.api_key)
        self.worker_headers = auth_headers(settings.worker_api_key or settings.api_key)

    def _post(self, url: str, body: dict | None = None, timeout: float = 10.0) -> Any:
        response = httpx.post(url, json=body, headers=self.headers, timeout=timeout, trust_env=False)
        response.raise_for_status()
        return response.json() if response.content else None

    def model_list(self) -> list[str]:
        try:
            self._post(self.controller + "/refresh_all_workers")
            models = self._post(self.controller + "/list_models")["models"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.logger.error("cannot list models at %s: %s: %s", self.controller, type(exc).__name__, exc)
            return []
        models = sort_models(models)
        self.logger.info("Models: %s", models)
        return models

    def worker_address(self, model: str) -> str:
        try:
            return self._post(self.controller + "/get_worker_address", {"model": model})["address"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.logger.error("get_worker_address failed: %s: %s", type(exc).__name__, exc)
            return ""

    def worker_status(self, address: str) -> dict[str, Any]:
        try:
            status = self._post(address.rstrip("/") + "/worker_get_status", timeout=5.0)
            return status if isinstance(status, dict) else {}
        except (httpx.HTTPError, ValueError) as exc:
            self.logger.info("worker_get_status at %s failed: %s", address, exc)
            return {}


# --- the UI ------------------------------------------------------------------------------------------
def build_demo(settings: WebSettings, models: list[str] | None = None, logger: logging.Logger | None = None):
    """The Gradio Blocks app. `models` is the list shown at start (fetched when None)."""
    logger = logger or logging.getLogger(LOGGER_NAME)
    backend = Backend(settings, logger)
    log_dir = get_logdir(settings.log_dir)
    models = backend.model_list() if models is None else list(models)  # refreshed on page loads while empty
    notice_text = no_worker_notice(settings.controller_url)

    def log_event(kind: str, model: str, session: ChatSession, request: gr.Request | None, **extra: Any) -> None:
        record = {"tstamp": round(time.time(), 4), "type": kind, "model": model, "state": session.conv.dict(),
                  "ip": getattr(getattr(request, "client", None), "host", None), **extra}
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            with open(conv_log_file(log_dir), "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError as exc:
            logger.error("cannot write the conversation log in %s: %s", log_dir, exc)

    # -- handlers ----------------------------------------------------------------------------------
    def load_demo(request: gr.Request):
        # an empty list is fetched again: the controller may have been down, or had no worker yet, at start
        if settings.model_list_mode == "reload" or not models:
            models[:] = backend.model_list()
        names = list(models)
        wanted = dict(request.query_params).get("model") if request is not None else None
        value = wanted if wanted in names else (names[0] if names else None)
        return (ChatSession(), gr.update(choices=names, value=value, visible=True),
                gr.update(value=notice_text, visible=not names))

    def vote(kind: str):
        def handler(session: ChatSession, model: str, request: gr.Request):
            log_event(kind, model, session, request)
            return ("",) + (gr.update(interactive=False),) * 3
        return handler

    def add_text(session: ChatSession, text: str, image: Image.Image | None, mode: str, request: gr.Request):
        text = text or ""
        if not text.strip() and image is None:
            session.skip_next = True
            return (session, session.chatbot(), "", None) + (gr.update(),) * 5
        if settings.moderate and violates_moderation(text):
            session.skip_next = True
            return (session, session.chatbot(), MODERATION_MSG, None) + (gr.update(),) * 5
        text = text[:MAX_PROMPT_CHARS_WITH_IMAGE if image is not None else MAX_PROMPT_CHARS]
        if image is not None:
            if "<image>" not in text:
                text = text + "\n<image>"
            session = ChatSession()  # a new image starts a new conversation (original rule)
            message: Any = (text, image, mode)
            session.images[len(session.conv.messages)] = save_image(image, log_dir)
        else:
            message = text
        session.conv.append_message(session.conv.roles[0], message)
        session.conv.append_message(session.conv.roles[1], None)
        session.skip_next = False
        return (session, session.chatbot(), "", None) + (gr.update(interactive=False),) * 5

    def http_bot(session: ChatSession, model: str, temperature: float, top_p: float, max_new_tokens: int,
                 gen_image: str, use_ocr: str, request: gr.Request):
        start = time.time()
        if session.skip_next:  # nothing was added (empty input or moderation)
            yield (session, session.chatbot()) + (gr.update(),) * 6
            return
        conv = session.conv
        if not model:  # none was listed when the page loaded: a worker may have registered since
            model = next(iter(backend.model_list()), None)
        if not model:
            conv.messages[-1][-1] = notice_text
            yield (session, session.chatbot(), gr.update(value=notice_text, visible=True)) + \
                (gr.update(interactive=True),) * 5
            return
        address = backend.worker_address(model)
        if not address:
            conv.messages[-1][-1] = SERVER_ERROR_MSG + "\n\n" + notice_text
            yield (session, session.chatbot(), gr.update(value=notice_text, visible=True)) + \
                (gr.update(interactive=True),) * 5
            return
        if session.template is None:  # first round: render the chat in the model's own template
            template = backend.worker_status(address).get("conv_template")
            template = template if template in conv_templates else template_for_model_name(model)
            new_conv = conv_templates[template].copy()
            images = {}
            for index, (_role, message) in enumerate(conv.messages[conv.offset:]):
                target = len(new_conv.messages)
                new_conv.append_message(new_conv.roles[index % 2], message)
                if conv.offset + index in session.images:
                    images[target] = session.images[conv.offset + index]
            session.conv, session.images, session.template = new_conv, images, template
            conv = new_conv
        prompt = conv.get_prompt()
        payload = {
            "model": model, "prompt": prompt, "temperature": float(temperature), "top_p": float(top_p),
            "max_new_tokens": min(int(max_new_tokens), MAX_NEW_TOKENS_LIMIT), "stop": conv.stop_str,
            "images": conv.get_images(), "gen_image": gen_image == "Yes", "use_ocr": use_ocr == "Yes",
        }
        logger.info("==== request ====\n%s", {**payload, "images": f"{len(payload['images'])} images"})
        answer_index = len(conv.messages) - 1
        conv.messages[-1][-1] = CURSOR
        yield (session, session.chatbot(), gr.update(visible=False)) + (gr.update(interactive=False),) * 5
        output = ""
        try:
            with httpx.stream("POST", address.rstrip("/") + "/worker_generate_stream", json=payload,
                              headers={"User-Agent": "MGM Client", **backend.worker_headers},
                              timeout=settings.request_timeout, trust_env=False) as response:
                for chunk in iter_chunks(response.iter_bytes()):
                    code = chunk.get("error_code", 1)
                    text = chunk.get("text", "")
                    if code != 0:
                        conv.messages[-1][-1] = f"{text} (error_code: {code})"
                        yield (session, session.chatbot(), gr.update()) + (gr.update(interactive=True),) * 5
                        return
                    output = text[len(prompt):].strip()
                    if chunk.get("image"):
                        picture = Image.open(io.BytesIO(base64.b64decode(chunk["image"])))
                        session.images[answer_index] = save_image(picture, log_dir, prefix="gen_")
                        conv.messages[-1][-1] = (output, chunk["image"])
                    else:
                        conv.messages[-1][-1] = output + CURSOR
                    yield (session, session.chatbot(), gr.update()) + (gr.update(interactive=False),) * 5
        except (httpx.HTTPError, ValueError, OSError) as exc:  # OSError: an undecodable generated image
            logger.error("stream from %s failed: %s: %s", address, type(exc).__name__, exc)
            conv.messages[-1][-1] = f"{SERVER_ERROR_MSG} (error_code: {NETWORK_ERROR_CODE})"
            yield (session, session.chatbot(), gr.update()) + (gr.update(interactive=True),) * 5
            return
        if isinstance(conv.messages[-1][-1], str):
            conv.messages[-1][-1] = conv.messages[-1][-1].removesuffix(CURSOR)
        yield (session, session.chatbot(), gr.update()) + (gr.update(interactive=True),) * 5
        logger.info("%s", output)
        log_event("chat", model, session, request, start=round(start, 4), finish=round(time.time(), 4),
                  images=[Path(p).stem for p in session.images.values() if not Path(p).name.startswith("gen_")])

    def regenerate(session: ChatSession):
        if len(session.conv.messages) > session.conv.offset:
            last = len(session.conv.messages) - 1
            session.conv.messages[-1][-1] = None
            session.images.pop(last, None)
        session.skip_next = False
        return (session, session.chatbot(), "", None) + (gr.update(interactive=False),) * 5

    def clear_history():
        session = ChatSession()
        return (session, session.chatbot(), "", None) + (gr.update(interactive=False),) * 5

    def stopped(session: ChatSession):
        # the stream was cancelled: drop the cursor from a half-written answer
        if session.conv.messages and isinstance(session.conv.messages[-1][-1], str):
            session.conv.messages[-1][-1] = session.conv.messages[-1][-1].removesuffix(CURSOR)
        return (session, session.chatbot()) + (gr.update(interactive=True),) * 5

    # -- layout ------------------------------------------------------------------------------------
    with gr.Blocks(title="MGM", analytics_enabled=False) as demo:
        state = gr.State(ChatSession())
        # created here, placed in the right column below; the examples on the left fill it
        textbox = gr.Textbox(show_label=False, placeholder="Enter text and press ENTER", container=False,
                             render=False, elem_id="textbox")
        if not settings.embed:
            gr.Markdown(f"# {TITLE}")
        notice = gr.Markdown(notice_text, visible=not models, elem_id="no-worker-notice")
        with gr.Row():
            with gr.Column(scale=3):
                model_selector = gr.Dropdown(choices=models, value=models[0] if models else None,
                                             interactive=True, show_label=False, container=False,
                                             elem_id="model-selector")
                imagebox = gr.Image(type="pil", label="Image", elem_id="imagebox")
                image_process_mode = gr.Radio(["Crop", "Resize", "Pad", "Default"], value="Default",
                                              label="Preprocess for non-square image", visible=False)
                gr.Examples(examples=[[str(EXAMPLES_DIR / name), text] for name, text in EXAMPLES],
                            inputs=[imagebox, textbox])
                with gr.Accordion("Function", open=True):
                    gen_image = gr.Radio(["Yes", "No"], value="No", label="Generate Image", elem_id="gen-image")
                    use_ocr = gr.Radio(["Yes", "No"], value="Yes", label="Use OCR", elem_id="use-ocr")
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, interactive=True, label="Temperature",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, interactive=True, label="Top P", elem_id="top-p")
                    max_output_tokens = gr.Slider(0, 1024, value=512, step=64, interactive=True,
                                                  label="Max output tokens", elem_id="max-tokens")
            with gr.Column(scale=7):
                chatbot = gr.Chatbot(elem_id="chatbot", label="MGM Chatbot", height=940)
                with gr.Row():
                    with gr.Column(scale=8):
                        textbox.render()
                    with gr.Column(scale=1, min_width=80):
                        submit_btn = gr.Button("Send", variant="primary", elem_id="send-btn")
                with gr.Row():
                    upvote_btn = gr.Button("Upvote", interactive=False)
                    downvote_btn = gr.Button("Downvote", interactive=False)
                    flag_btn = gr.Button("Flag", interactive=False)
                    stop_btn = gr.Button("Stop", elem_id="stop-btn")
                    regenerate_btn = gr.Button("Regenerate", interactive=False, elem_id="regenerate-btn")
                    clear_btn = gr.Button("Clear", interactive=False, elem_id="clear-btn")
        if not settings.embed:
            gr.Markdown(TOS_MARKDOWN)
            gr.Markdown(LEARN_MORE_MARKDOWN)

        buttons = [upvote_btn, downvote_btn, flag_btn, regenerate_btn, clear_btn]
        bot_inputs = [state, model_selector, temperature, top_p, max_output_tokens, gen_image, use_ocr]
        bot_outputs = [state, chatbot, notice] + buttons
        input_outputs = [state, chatbot, textbox, imagebox] + buttons

        upvote_btn.click(vote("upvote"), [state, model_selector], [textbox, upvote_btn, downvote_btn, flag_btn])
        downvote_btn.click(vote("downvote"), [state, model_selector], [textbox, upvote_btn, downvote_btn, flag_btn])
        flag_btn.click(vote("flag"), [state, model_selector], [textbox, upvote_btn, downvote_btn, flag_btn])
        events = [
            regenerate_btn.click(regenerate, [state], input_outputs, queue=False).then(
                http_bot, bot_inputs, bot_outputs),
            textbox.submit(add_text, [state, textbox, imagebox, image_process_mode], input_outputs,
                           queue=False).then(http_bot, bot_inputs, bot_outputs),
            submit_btn.click(add_text, [state, textbox, imagebox, image_process_mode], input_outputs,
                             queue=False).then(http_bot, bot_inputs, bot_outputs),
        ]
        clear_btn.click(clear_history, None, input_outputs, queue=False)
        # cancel the running answer first; then tidy the half-written message
        stop_btn.click(None, None, None, cancels=events, queue=False).then(
            stopped, [state], [state, chatbot] + buttons, queue=False)
        demo.load(load_demo, None, [state, model_selector, notice], queue=False)
    return demo


# --- CLI ---------------------------------------------------------------------------------------------
def parse_settings(argv: list[str] | None = None) -> WebSettings:
    a = build_parser().parse_args(argv)
    return WebSettings(controller_url=a.controller_url, host=a.host, port=a.port, share=a.share,
                       concurrency_count=a.concurrency_count, model_list_mode=a.model_list_mode,
                       moderate=a.moderate, embed=a.embed, api_key=a.api_key, worker_api_key=a.worker_api_key,
                       request_timeout=a.request_timeout,
                       log_dir=a.log_dir, demo_auth=a.demo_auth)


def launch(settings: WebSettings, logger: logging.Logger | None = None, **launch_kwargs: Any):
    """Build and start the demo; returns the Blocks (launch_kwargs go to `Blocks.launch`)."""
    demo = build_demo(settings, logger=logger)
    log_dir = Path(get_logdir(settings.log_dir)).resolve()
    (log_dir / "serve_images").mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=settings.concurrency_count, api_open=False)
    if "auth" not in launch_kwargs:
        launch_kwargs["auth"] = resolve_demo_auth(settings.demo_auth, host=settings.host, share=settings.share,
                                                  api_key=settings.api_key)
    demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share,
                allowed_paths=[str(log_dir / "serve_images"), str(EXAMPLES_DIR)], **launch_kwargs)
    return demo


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logger = build_logger(LOGGER_NAME, "gradio_web_server.log", settings.log_dir)
    logger.info("args: %s", {k: ("***" if "key" in k and v else v) for k, v in vars(settings).items()})
    launch(settings, logger)


if __name__ == "__main__":
    main()
