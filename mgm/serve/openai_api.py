"""OpenAI-compatible routes of the model worker: `POST /v1/chat/completions` and `GET /v1/models`.

The chat messages are rendered with the model's own conversation template (chosen from its config,
or the worker's `--conv-mode`): system/developer text becomes the template's system prompt, user and
assistant turns become its turns, and each `image_url` part becomes one `<image>` in front of its
message's text (`Image k:<image>` numbering when there are several, as the CLI does). Images come from
`data:` URLs; local files only when the operator allows them; http(s) URLs only with
`--allow-remote-images` (rules in mgm.serve.openai_protocol). Generation goes through the worker's
dynamic batcher, so concurrent API calls are batched with everything else.

`stream: true` answers with server-sent events (`chat.completion.chunk` objects, a final chunk with
`finish_reason`, an optional usage chunk, then `data: [DONE]`); otherwise one `chat.completion`.
`usage.prompt_tokens` counts the prompt as the model sees it (image tokens included).
Errors are JSON in OpenAI's shape: 400 bad request (including fields this server cannot honour and
a prompt longer than the context, refused by a character bound before tokenising), 401 key, 404
unknown model, 413 too large. Tokenising and image decoding run off the event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mgm.constants import DEFAULT_IMAGE_TOKEN
from mgm.conversation import Conversation, SeparatorStyle, get_template
from mgm.errors import UserError
from mgm.profile import number_images
from mgm.inference.tickets import Ticket
from mgm.inference.engine import InferenceEngine, context_limit, request_token_count
from mgm.inference.requests import GenerationParams
from mgm.inference.requests import Request as EngineRequest
from mgm.serve.openai_protocol import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatMessage,
    DeltaMessage,
    ModelCard,
    ModelList,
    Usage,
    image_part_count,
    make_completion_id,
    probe_image_url,
    body_surely_too_long,
    body_too_long_error,
    prompt_too_long,
    sse_event,
    text_chars,
)
from mgm.serve.chat_body import parse_chat_request
from mgm.serve.limits import PendingImage, RequestLimits, check_image_count, check_pixels, check_stops, decode_all
from mgm.serve.protocol import ModelNotFoundError, RequestError, error_body, request_error_body
from mgm.serve.security import ImagePolicy, json_body

DEFAULT_MAX_TOKENS = 512  # when the client sets none (the CLI's default), capped by the context left
LOGGER_NAME = "mgm.serve.openai_api"


class ChatBackend(Protocol):
    """What the routes need from a model worker."""

    model_name: str
    conv_mode: str
    engine: InferenceEngine
    image_policy: ImagePolicy
    limits: RequestLimits  # stop strings, images and pixels per request (checked before queueing)
    chunk_interval: float  # seconds a stream gathers text between events (Ticket.updates)
    max_prompt_chars: int  # a prompt longer than this surely overflows the context (model_worker.prompt_char_limit)

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold one of the worker's concurrency slots (queue accounting + heart beat)."""

    def submit(self, request: EngineRequest) -> Ticket:
        """Queue a request in the worker's batcher (from the event loop)."""

    def expect(self) -> int:
        """Announce a request still being prepared, so a forming batch waits for it."""

    def fulfil(self, token: int | None) -> None:
        """The announced request was submitted or dropped."""


# --- prompt building ---------------------------------------------------------------------------------
_HEADER_SYSTEMS = ("<|start_header_id|>system<|end_header_id|>\n\n", "<|im_start|>system\n")


def apply_system(conv: Conversation, text: str) -> str | None:
    """Put a client's system text into `conv`; returns text that must go into the first user turn
    instead (templates without a system slot: gemma, plain), else None."""
    if conv.sep_style in (SeparatorStyle.GEMMA, SeparatorStyle.PLAIN):
        return text
    for header in _HEADER_SYSTEMS:  # LLaMA-3 / ChatML keep their header, the text after it is replaced
        if conv.system.startswith(header):
            conv.system = header + text
            return None
    conv.system = text
    return None


def messages_to_prompt(messages: list[ChatMessage], conv_mode: str, load_image: Callable[[str, str], Any],
                       ) -> tuple[str, list[Any]]:
    """Render OpenAI messages with the template `conv_mode`; returns (prompt, images in `<image>` order).

    `load_image(url, what)` turns an image_url into an image (a PIL image, or the worker's
    `PendingImage` whose pixels are decoded later), raising RequestError. Consecutive
    messages of one role are joined by a newline. The last message must be the user's.
    """
    conv = get_template(conv_mode)
    system_parts: list[str] = []
    turns: list[tuple[str, str, list[Any]]] = []  # (role, text, images)
    for index, message in enumerate(messages):
        text, urls = message.text_and_image_urls()
        if message.role in ("system", "developer"):
            if urls:
                raise RequestError(f"messages[{index}]: images are only accepted in user messages", param="messages")
            system_parts.append(text)
            continue
        if message.role == "assistant" and urls:
            raise RequestError(f"messages[{index}]: images are only accepted in user messages", param="messages")
        images = [load_image(url, f"messages[{index}].content image {k}") for k, url in enumerate(urls)]
        tags = text.count(DEFAULT_IMAGE_TOKEN)
        if images and tags == 0:
            text = (DEFAULT_IMAGE_TOKEN + "\n") * len(images) + text
        elif tags != len(images):
            raise RequestError(f"messages[{index}]: the text has {tags} '<image>' tags but the message has "
                               f"{len(images)} image parts; use one tag per image or none", param="messages")
        if turns and turns[-1][0] == message.role:
            role, previous, prev_images = turns[-1]
            turns[-1] = (role, previous + "\n" + text, prev_images + images)
        else:
            turns.append((message.role, text, images))
    if not turns or turns[-1][0] != "user":
        raise RequestError("the last message must come from the user", param="messages")
    if turns[0][0] != "user":
        raise RequestError("the conversation must start with a user message (after any system messages)",
                           param="messages")
    if system_parts:
        leftover = apply_system(conv, "\n".join(system_parts))
        if leftover:
            role, text, images = turns[0]
            turns[0] = (role, leftover + "\n\n" + text, images)
    all_images = [image for _, _, images in turns for image in images]
    for role, text, _ in turns:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    # several images: the k-th `<image>` becomes `Image k:<image>` (the profile's multi-image form)
    return number_images(conv.get_prompt()), all_images


# --- routes ------------------------------------------------------------------------------------------
def build_openai_router(backend: ChatBackend, logger: logging.Logger | None = None) -> APIRouter:
    """The `/v1` routes for `backend` (add the API-key dependency when including the router)."""
    logger = logger or logging.getLogger(LOGGER_NAME)
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=backend.model_name)]).model_dump()

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != backend.model_name:
            raise ModelNotFoundError(f"The model `{model_id}` does not exist; this worker serves "
                                     f"`{backend.model_name}`", param="model")
        return ModelCard(id=model_id).model_dump()

    parse_body = json_body(ChatCompletionRequest, parse_chat_request)

    @router.post("/v1/chat/completions")
    async def chat_completions(http_request: Request) -> Response:
        raw = await http_request.body()
        if body_surely_too_long(raw, backend.max_prompt_chars):
            raise body_too_long_error(raw, backend.max_prompt_chars)
        body = await parse_body(http_request)
        if body.model != backend.model_name:
            raise ModelNotFoundError(f"The model `{body.model}` does not exist; this worker serves "
                                     f"`{backend.model_name}`", param="model")
        body.check_supported()
        check_stops(body.stop_list(), backend.limits)
        check_image_count(image_part_count(body.messages), backend.limits)
        chars = text_chars(body.messages)
        if chars > backend.max_prompt_chars:  # refused before any tokenising: a huge prompt costs nothing
            raise prompt_too_long(chars, backend.max_prompt_chars)
        expected = backend.expect()  # released at submission (a stream never started: after a TTL)
        try:
            return await _answer(body, expected)
        except BaseException:
            backend.fulfil(expected)
            raise

    async def _answer(body: ChatCompletionRequest, expected: int) -> Response:
        def load(url: str, what: str) -> PendingImage:
            return probe_image_url(url, backend.image_policy, what=what)

        # fetching and header reads off the event loop; pixels are decoded only once a slot is held
        prompt, pending = await asyncio.to_thread(messages_to_prompt, body.messages, backend.conv_mode, load)
        check_pixels(pending, backend.limits)
        stops = list(dict.fromkeys(body.stop_list() + get_template(backend.conv_mode).stop_strings()))
        # the probed images stand in for the decoded ones until then (sizing counts only how many)
        engine_request = EngineRequest(prompt, list(pending), GenerationParams(
            temperature=body.temperature, top_p=body.top_p, max_new_tokens=1, stop=stops))
        try:
            prompt_tokens = await asyncio.to_thread(request_token_count, backend.engine, engine_request)
        except UserError as exc:
            raise RequestError(str(exc), param="messages") from None
        room = context_limit(backend.engine) - prompt_tokens
        if room < 1:
            raise RequestError(f"the prompt is {prompt_tokens} tokens (image tokens included), which fills the "
                               f"model's context of {context_limit(backend.engine)}", param="messages")
        engine_request.params.max_new_tokens = min(body.token_limit(DEFAULT_MAX_TOKENS), room)
        completion_id = make_completion_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(backend, engine_request, pending, body.model, completion_id, prompt_tokens,
                        include_usage, logger, expected),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            async with backend.slot():
                engine_request.images = await asyncio.to_thread(decode_all, pending, backend.image_policy)
                ticket = backend.submit(engine_request)
                backend.fulfil(expected)
                text = "".join([piece async for piece in ticket.updates()])
        except RequestError:
            raise
        except UserError as exc:
            raise RequestError(str(exc)) from None
        except Exception:
            logger.exception("generation failed")
            return JSONResponse(error_body("the model failed to generate an answer", error_type="server_error",
                                           code="generation_failed"), status_code=500)
        finally:
            backend.fulfil(expected)
        result = ticket.result
        assert result is not None
        return JSONResponse(ChatCompletionResponse(
            id=completion_id, model=body.model,
            choices=[ChatCompletionChoice(message=AssistantMessage(content=text),
                                          finish_reason="length" if result.finish_reason == "length" else "stop")],
            usage=Usage.of(prompt_tokens, result.completion_tokens)).model_dump())

    return router


async def _stream(backend: ChatBackend, engine_request: EngineRequest, pending: list[PendingImage], model: str,
                  completion_id: str, prompt_tokens: int, include_usage: bool, logger: logging.Logger,
                  expected: int | None = None) -> AsyncIterator[bytes]:
    """The SSE events of one streamed completion (`expected`: the handler's `expect()` token); the
    `pending` images are decoded once a slot is held."""

    def chunk(delta: DeltaMessage, finish_reason: str | None = None) -> bytes:
        return sse_event(ChatCompletionChunk(id=completion_id, model=model, choices=[
            ChatCompletionStreamChoice(delta=delta, finish_reason=finish_reason)]))  # type: ignore[arg-type]

    try:
        async with backend.slot():
            try:
                engine_request.images = await asyncio.to_thread(decode_all, pending, backend.image_policy)
            except RequestError as exc:  # corrupt past the header: the stream has not started yet
                yield sse_event(request_error_body(exc))
                yield SSE_DONE
                return
            ticket = backend.submit(engine_request)
            backend.fulfil(expected)
            yield chunk(DeltaMessage(role="assistant", content=""))
            try:
                async for piece in ticket.updates(backend.chunk_interval):
                    yield chunk(DeltaMessage(content=piece))
            except Exception as exc:
                message = str(exc) if isinstance(exc, UserError) else "the model failed to generate an answer"
                if not isinstance(exc, UserError):
                    logger.error("generation failed", exc_info=exc)
                # an error event: the openai client raises APIError on it
                yield sse_event(error_body(message, error_type="server_error", code="generation_failed"))
                yield SSE_DONE
                return
    finally:
        backend.fulfil(expected)
    result = ticket.result
    assert result is not None
    yield chunk(DeltaMessage(), "length" if result.finish_reason == "length" else "stop")
    if include_usage:
        yield sse_event(ChatCompletionChunk(id=completion_id, model=model, choices=[],
                                            usage=Usage.of(prompt_tokens, result.completion_tokens)))
    yield SSE_DONE
