"""The model worker: serves one loaded MGM model to the controller, the web demo and OpenAI clients.

    python -m mgm.serve.model_worker --host 127.0.0.1 --port 21002 \
        --controller http://127.0.0.1:21001 --worker http://127.0.0.1:21002 --model-path PATH

Speaks the original protocol (docs/original.md#serving): `POST /worker_generate_stream` takes `{prompt, images
(base64), temperature, top_p, max_new_tokens, stop, gen_image, use_ocr}` and streams
`{"text": prompt + answer_so_far, "error_code": 0}` JSON objects, each followed by a NUL byte;
`POST /worker_get_status` answers `{model_names, speed, queue_length}` (plus `conv_template`, `ocr`,
`gen` for clients that want them). It registers with the controller and sends heart beats.
Additions: OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models` (mgm.serve.openai_api),
`GET /health`, optional API key, body/image size limits, and these changes from the original:

- concurrent requests are batched (mgm.inference.batcher; continuous batching: a request joins the
  running batch at the next token) instead of generated one after another;
  `--limit-model-concurrency` bounds how many are in flight (and the batch size);
- OCR text and the `<GEN>` tag go at the end of the last user turn for every template (the original
  looked for `###Assistant:` and misplaced them for vicuna_v1 and gemma, docs/original.md#fixed-defects); OCR and the image
  pipeline are only loaded with `--ocr` / `--gen`; `stop` may be absent;
- the token budget counts the real number of image tokens (HD checkpoints use 5x576, docs/original.md#fixed-defects);
- a corrupt or oversized image, a tag/image count mismatch or any malformed body is answered 4xx with
  a JSON body that also carries `text` (what went wrong) and `error_code` (so original clients show it);
- a prompt longer than the context can hold is refused before it is tokenised (a cheap character
  bound, `prompt_char_limit`), and tokenising and image decoding run off the event loop;
- registration happens once the server accepts connections (the controller calls back to verify it),
  carrying the worker key `--api-key` (mgm.serve.worker_heart_beat);
- a client that disconnects stops its generation; the worker keeps serving the others;
- each request's cost is bounded before it queues (mgm.serve.limits: stop strings, images, pixels per
  request), images are decoded only once it holds a slot, an over-long prompt is a 400 (not echoed back).
- images are encoded once per content and the KV of earlier prompts and answers is reused by requests
  that start the same way (a chat resending its history prefills only its new message;
  mgm.inference.cached_prefill); `--image-cache-mb`, `--prefix-cache-mb`, `--no-prefix-cache` bound or
  turn them off, and `/worker_get_status` reports their hits, misses and bytes under `caches`.
"""
from __future__ import annotations

# ruff: noqa: E402 -- the imports below come after the early argument parse on purpose
from mgm.serve.worker_settings import build_parser

if __name__ == "__main__":
    # Run as a program: `--help` and flag errors answer here, before torch, transformers and fastapi
    # load below (seconds); main() parses the same flags again.
    build_parser().parse_args()

import asyncio
import base64
import contextlib
import functools
import io
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image

from mgm.constants import DEFAULT_IMAGE_TOKEN
from mgm.conversation import conv_templates
from mgm.errors import UserError, exit_on_user_error
from mgm.inference.batcher import DynamicBatcher
from mgm.inference.engine import InferenceEngine, context_limit, request_token_count
from mgm.inference.requests import GenerationParams
from mgm.inference.requests import Request as EngineRequest
from mgm.inference.tickets import Ticket
from mgm.serve.limits import (
    PendingImage,
    check_image_count,
    check_pixels,
    check_stops,
    decode_all,
    over_long_prompt,
    probe_base64_image,
)
from mgm.serve.logging_utils import build_logger
from mgm.serve.protocol import (
    ERROR_OK,
    ERROR_WORKER,
    EXCEEDS_MAX_TOKENS_MSG,
    SERVER_ERROR_MSG,
    GenerateParams,
    RequestError,
    encode_chunk,
    error_chunk,
)
from mgm.serve.security import (
    DEFAULT_IDLE_TIMEOUT,
    BodySizeLimitMiddleware,
    ImagePolicy,
    api_key_dependency,
    decode_base64_image,
    error_response,
    install_error_handlers,
    install_large_body_gate,
    json_body,
)
from mgm.serve.worker_heart_beat import ControllerLink
from mgm.serve.worker_settings import (  # noqa: F401 (API_KEY_ENV, parse_settings: re-exported)
    API_KEY_ENV,
    WorkerSettings,
    build_parser,
    parse_settings,
    settings_from_args,
)

LOGGER_NAME = "mgm.serve.model_worker"
GEN_TAG = " <GEN>"
OCR_PREFIX = "\nReference OCR Token: "


# --- prompt editing ----------------------------------------------------------------------------------
_PROBE = "\x00mgm-user-text\x00"


@functools.cache
def assistant_tail(template: str) -> str:
    """What a template renders after the end of the last user message when the assistant turn is open.

    E.g. vicuna_v1 " ASSISTANT:", gemma "<end_of_turn>\\n<start_of_turn>model\\n", mistral " [/INST]".
    """
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], _PROBE)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    return prompt[prompt.rindex(_PROBE) + len(_PROBE):]


@functools.cache
def _templates_by_marker() -> tuple[str, ...]:
    """Template names, longest assistant marker first (computed once, not per request)."""
    return tuple(sorted(conv_templates, key=lambda name: -len(assistant_tail(name).strip())))


def add_content(prompt: str, content: str, template: str | None = None) -> str:
    """Insert `content` at the end of the last user message of a fully templated `prompt`.

    The template is recognised by the assistant marker the prompt ends with (`template`, the model's
    own, is tried first; then the longest marker of any known template). Prompts that end otherwise
    fall back to the original's markers (`" [/INST]"`, `<|im_end|>`, `###Assistant:`), and finally to
    appending at the end.
    """
    stripped = prompt.rstrip()
    names = ([template] if template in conv_templates else []) + list(_templates_by_marker())
    for name in names:
        tail = assistant_tail(name).rstrip()
        if not tail.strip():  # e.g. the plain template: no marker to recognise
            continue
        if stripped.endswith(tail):
            cut = len(stripped) - len(tail)
            return prompt[:cut] + content + prompt[cut:]
    for marker in (" [/INST]", "<|im_end|>", "###Assistant:"):
        cut = prompt.rfind(marker)
        if cut != -1:
            return prompt[:cut] + content + prompt[cut:]
    return prompt + content


def prompt_char_limit(engine: InferenceEngine) -> int:
    """Characters beyond which a prompt surely exceeds the model's context, known without tokenising.

    No token covers more characters than the longest vocabulary entry (its raw spelling, which is never
    shorter than the text it decodes to), so a prompt of more than context x that many characters has
    more tokens than the context holds.
    """
    longest = max((len(token) for token in engine.tokenizer.get_vocab()), default=1)
    return context_limit(engine) * max(longest, 1)


def image_to_jpeg_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- the worker --------------------------------------------------------------------------------------
class ModelWorker:
    """One loaded model behind the worker protocol: batching, queue accounting, registration, beats."""

    def __init__(self, settings: WorkerSettings, engine: InferenceEngine, *, model_name: str, conv_mode: str,
                 ocr: Any = None, pipe: Any = None, logger: logging.Logger | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.model_name = model_name
        self.conv_mode = conv_mode
        self.ocr = ocr
        self.pipe = pipe
        self.worker_id = worker_id or uuid.uuid4().hex[:6]
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.worker_address = settings.worker_address.rstrip("/")
        self.controller_address = settings.controller_address.rstrip("/")
        self.image_policy = ImagePolicy(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                                        allow_local_files=settings.allow_local_images,
                                        allow_remote=settings.allow_remote_images)
        self.limits = settings.limits
        self.batcher = DynamicBatcher(engine, max_batch_size=settings.batch_size, batch_window=settings.batch_window,
                                      logger=self.logger, continuous=settings.batching == "continuous")
        for stop in engine.profile.with_template(conv_mode).stop_strings:
            engine.add_eos_token(stop)  # e.g. <|eot_id|> for llama_3, <|im_end|> for ChatML
        if (isinstance(engine, InferenceEngine) and engine.caches is None and settings.batching == "continuous"
                and any(settings.cache_bytes)):  # mgm's engine only: vLLM reuses prefixes by itself
            engine.use_caches(*settings.cache_bytes)  # shared by both protocols (and the web demo behind them)
        self._caches_logged = (0.0, None)  # (when, what) the cache counters were last logged
        self.chunk_interval = settings.chunk_interval
        self.max_prompt_chars = prompt_char_limit(engine)
        self._in_flight = 0  # requests waiting for a slot or generating (the heart beat's queue_length)
        self._semaphore: asyncio.Semaphore | None = None
        self.link = None if settings.no_register else ControllerLink(
            self.controller_address, self.worker_address, status=self.status, queue_length=lambda: self._in_flight,
            interval=settings.heart_beat_interval, api_key=settings.api_key, logger=self.logger)
        self._warned: set[str] = set()

    @classmethod
    def load(cls, settings: WorkerSettings, logger: logging.Logger | None = None,
             worker_id: str | None = None) -> ModelWorker:
        """Load the model (and OCR / the image pipeline when enabled) as `settings` say."""
        from mgm.model_name import get_model_name_from_path
        from mgm.model.builder import load_pretrained_model
        from mgm.profile import profile_of

        logger = logger or logging.getLogger(LOGGER_NAME)
        if not settings.model_path:
            raise UserError("--model-path is required")
        model_name = settings.model_name or get_model_name_from_path(settings.model_path)
        logger.info("Loading the model %s on worker %s ...", model_name, worker_id)
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            settings.model_path, settings.model_base, model_name, settings.load_8bit, settings.load_4bit,
            device=settings.device, use_flash_attn=settings.use_flash_attn, quantization=settings.quantization)
        profile = profile_of(model).with_template(settings.conv_mode)
        engine = InferenceEngine(tokenizer, model, image_processor, context_len, profile=profile)
        conv_mode = profile.template
        ocr = pipe = None
        if settings.ocr:
            from mgm.serve.ocr import build_ocr

            ocr = build_ocr(settings.ocr_backend, settings.device)
            logger.info("OCR engine: %s", ocr.name)
        if settings.gen:
            from mgm.serve.imagegen import load_pipeline

            pipe = load_pipeline(settings.gen_model_path, device=settings.device, cpu_offload=settings.gen_cpu_offload)
            logger.info("image generation pipeline: %s", settings.gen_model_path)
        return cls(settings, engine, model_name=model_name, conv_mode=conv_mode, ocr=ocr, pipe=pipe,
                   logger=logger, worker_id=worker_id)

    # -- status / queue ---------------------------------------------------------------------------
    @property
    def queue_length(self) -> int:
        return self._in_flight

    @property
    def registered(self) -> bool:
        return self.link is not None and self.link.registered.is_set()

    def _beat_now(self) -> None:
        if self.link is not None:
            self.link.beat_now.set()

    def status(self) -> dict[str, Any]:
        return {"model_names": [self.model_name], "speed": 1, "queue_length": self.queue_length,
                "conv_template": self.conv_mode, "ocr": self.ocr is not None, "gen": self.pipe is not None,
                "max_prompt_chars": self.max_prompt_chars, "max_stop_strings": self.limits.max_stop_strings,
                "max_stop_chars": self.limits.max_stop_chars, "max_images": self.limits.max_images,
                "batching": self.batcher.stats(),
                "caches": self.engine.caches.stats() if self.engine.caches is not None else None}

    def log_caches(self, every: float = 10.0) -> None:
        """Log the caches' hits, misses and bytes when they changed, at most once per `every` seconds."""
        if self.engine.caches is None:
            return
        line, (when, last) = self.engine.caches.describe(), self._caches_logged
        if line != last and time.monotonic() - when >= every:
            self._caches_logged = (time.monotonic(), line)
            self.logger.info("caches: %s", line)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for one of `--limit-model-concurrency` slots; counts in the queue length meanwhile."""
        if self._semaphore is None:
            raise RuntimeError("the worker is not started")
        self._in_flight += 1
        try:
            async with self._semaphore:
                self._beat_now()  # as the original: a beat when a request starts ...
                yield
        finally:
            self._in_flight -= 1
            self._beat_now()  # ... and when it ends
            self.log_caches()

    def submit(self, request: EngineRequest) -> Ticket:
        return self.batcher.submit_async(request)

    def expect(self) -> int:
        """Announce a request still being prepared (the batcher waits a little for it)."""
        return self.batcher.expect()

    def fulfil(self, token: int | None) -> None:
        self.batcher.fulfil(token)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start batching and the controller link (registration waits for the server: it runs on a thread)."""
        self._semaphore = asyncio.Semaphore(self.settings.limit_model_concurrency)
        self.batcher.start()
        if self.link is not None:
            self.link.start()

    async def stop(self) -> None:
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)
        await asyncio.to_thread(self.batcher.stop)

    # -- generation (original protocol) -----------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.logger.warning(message)

    def decode_images(self, images: list[str]) -> list[Image.Image]:
        return [decode_base64_image(b64, self.image_policy, mode="RGB", what=f"images[{i}]")
                for i, b64 in enumerate(images)]

    def probe_images(self, images: list[str]) -> list[PendingImage]:
        """The images' headers only (sizes checked, pixels per request bounded); decoded after a slot."""
        pending = [probe_base64_image(b64, self.image_policy, what=f"images[{i}]") for i, b64 in enumerate(images)]
        check_pixels(pending, self.limits)
        return pending

    def check_request(self, params: GenerateParams) -> bool:
        """Refuse what needs no model to refuse (RequestError); False when the prompt surely overflows
        the context (the caller answers the original's "Exceeds max token length" without tokenising)."""
        check_stops([params.stop] if params.stop else [], self.limits)
        check_image_count(len(params.images), self.limits, param="images")
        n_tags = params.prompt.count(DEFAULT_IMAGE_TOKEN)
        if n_tags != len(params.images):
            raise RequestError(f"the prompt has {n_tags} {DEFAULT_IMAGE_TOKEN} tag(s) but {len(params.images)} "
                               f"image(s) were sent; send one image per tag", param="images")
        if params.images and self.engine.model.get_vision_tower() is None:
            raise RequestError(f"model {self.model_name} has no vision tower; send text only", param="images")
        return len(params.prompt) <= self.max_prompt_chars

    async def generate_stream(self, params: GenerateParams, images: list[Image.Image] | list[PendingImage],
                              expected: int | None = None) -> AsyncIterator[bytes]:
        """The NUL-delimited chunks for one request (errors become one `error_code: 1` chunk).

        `images` may be probed (`PendingImage`): they are decoded once the request holds a slot.
        `expected`: the token from `expect()` taken when the request arrived (released at submission).
        """
        try:
            async with self.slot():
                try:
                    pending = [image for image in images if isinstance(image, PendingImage)]
                    if pending:
                        images = await asyncio.to_thread(decode_all, pending, self.image_policy)
                    async for chunk in self._generate(params, images, expected):
                        yield chunk
                except (UserError, ValueError) as exc:
                    self.logger.info("request failed: %s", exc)
                    # user-facing errors say what happened; anything else keeps the original's message
                    known = isinstance(exc, (UserError, RequestError))
                    yield error_chunk(ERROR_WORKER, str(exc) if known else SERVER_ERROR_MSG)
                except Exception:
                    self.logger.exception("generation failed")
                    yield error_chunk(ERROR_WORKER, SERVER_ERROR_MSG)
        finally:
            self.fulfil(expected)

    async def _generate(self, params: GenerateParams, images: list[Image.Image],
                        expected: int | None = None) -> AsyncIterator[bytes]:
        ori_prompt = prompt = params.prompt
        n_tags = prompt.count(DEFAULT_IMAGE_TOKEN)
        if n_tags != len(images):
            raise ValueError(f"the prompt has {n_tags} <image> tags but {len(images)} images were sent")
        gen = params.gen_image and self.pipe is not None
        if params.gen_image and self.pipe is None:
            self._warn_once("gen", "gen_image requested but this worker runs without --gen; ignored")
        if gen:
            prompt = add_content(prompt, GEN_TAG, self.conv_mode)
        if params.use_ocr and images:
            if self.ocr is None:
                self._warn_once("ocr", "use_ocr requested but this worker runs without --ocr; ignored")
            else:
                texts = await asyncio.to_thread(lambda: [self.ocr.read(image) for image in images])
                joined = ", ".join(t for t in texts if t)  # the original glued images' texts together
                if joined:
                    prompt = add_content(prompt, OCR_PREFIX + joined + "\n", self.conv_mode)
        request = EngineRequest(prompt, images, GenerationParams(
            temperature=params.temperature, top_p=params.top_p, max_new_tokens=1,
            stop=[params.stop] if params.stop else []))
        # budget as the original: context - prompt ids (one placeholder per image) - image tokens,
        # i.e. the prompt as the model sees it plus one more token per image
        prompt_tokens = await asyncio.to_thread(request_token_count, self.engine, request)
        budget = context_limit(self.engine) - prompt_tokens - len(images)
        max_new_tokens = min(params.max_new_tokens, budget)
        if max_new_tokens < 1:
            yield encode_chunk({"text": ori_prompt + EXCEEDS_MAX_TOKENS_MSG, "error_code": ERROR_OK})
            return
        request.params.max_new_tokens = max_new_tokens
        ticket = self.submit(request)
        self.fulfil(expected)
        generated = ""
        pending = 0
        async for piece in ticket.updates(self.chunk_interval):
            generated += piece
            pending += 1
            if pending >= self.settings.stream_interval:
                pending = 0
                yield encode_chunk({"text": ori_prompt + generated, "error_code": ERROR_OK})
        if pending or not generated:
            yield encode_chunk({"text": ori_prompt + generated, "error_code": ERROR_OK})
        if gen:
            from mgm.serve.imagegen import H_OPEN, generate_image, hidden_prompt

            sd_prompt = hidden_prompt(generated, last=False)
            if sd_prompt is not None:
                image = await asyncio.to_thread(generate_image, self.pipe, sd_prompt)
                b64 = await asyncio.to_thread(image_to_jpeg_base64, image)
                text = ori_prompt + generated.split(H_OPEN)[0] + "\nPrompt: " + sd_prompt + "\n"
                yield encode_chunk({"text": text, "image": b64, "error_code": ERROR_OK})


# --- app ---------------------------------------------------------------------------------------------
def create_app(worker: ModelWorker) -> FastAPI:
    """The worker's FastAPI app; its lifespan starts/stops the batcher, registration and heart beats."""
    from mgm.serve.openai_api import build_openai_router

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(title="mgm model worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    install_error_handlers(app)
    install_large_body_gate(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=worker.settings.max_body_bytes,
                       body_timeout=worker.settings.body_timeout,
                       idle_timeout=min(DEFAULT_IDLE_TIMEOUT, worker.settings.body_timeout))
    dependencies = [Depends(api_key_dependency(worker.settings.api_key))]
    router = APIRouter(dependencies=dependencies)

    @router.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request,
                                     params: Annotated[GenerateParams, Depends(json_body(GenerateParams))]) -> Response:
        try:
            if not worker.check_request(params):  # refused without echoing megabytes of prompt back
                raise over_long_prompt(len(params.prompt), worker.max_prompt_chars)
        except RequestError as exc:
            # JSON for HTTP-aware clients, with text/error_code so original clients show what went wrong
            return error_response(request, exc)
        expected = worker.expect()
        try:
            images = await asyncio.to_thread(worker.probe_images, params.images)
        except RequestError as exc:
            worker.fulfil(expected)
            return error_response(request, exc)
        except BaseException:
            worker.fulfil(expected)
            raise
        return StreamingResponse(worker.generate_stream(params, images, expected))

    @router.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return worker.status()

    app.include_router(router)
    app.include_router(build_openai_router(worker, worker.logger), dependencies=dependencies)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": worker.model_name, "queue_length": worker.queue_length}

    return app


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    worker_id = uuid.uuid4().hex[:6]
    logger = build_logger(LOGGER_NAME, f"model_worker_{worker_id}.log", settings.log_dir)
    if args.multi_modal:
        logger.warning("--multi-modal is deprecated and ignored: multimodal support is detected from the model")
    logger.info("args: %s", {k: ("***" if "key" in k and v else v) for k, v in vars(settings).items()})
    if settings.num_threads:
        import torch

        torch.set_num_threads(settings.num_threads)
    worker = ModelWorker.load(settings, logger, worker_id)
    import uvicorn  # imported here: only the running server needs it

    uvicorn.run(create_app(worker), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
