"""OpenAI-compatible chat API: request/response models, SSE framing and image-URL resolution.

Covers what the official `openai` client sends to `POST /v1/chat/completions` (string content or a list
of `{"type": "text"}` / `{"type": "image_url"}` parts, temperature, top_p, max_tokens, stop, stream, n=1)
and what it expects back (`chat.completion`, or `chat.completion.chunk` events as `data: {...}\\n\\n`
ending with `data: [DONE]\\n\\n`), plus `GET /v1/models`. Fields this server cannot honour (tools,
`response_format` other than text, logprobs, penalties, sampling with a seed, ...) are refused with a
400 naming the field (`ChatCompletionRequest.check_supported`) rather than silently ignored.

Image parts resolve by these rules (`resolve_image_url` / `load_image_url`):
- `data:<mime>;base64,<data>` → decoded (always allowed);
- a local path or `file://` URL → only when `policy.allow_local_files`;
- `http://` / `https://` → only when `policy.allow_remote` (fetched with a timeout, streamed, cut at the
  byte limit);
- anything else → 400. Over the byte or pixel limit → 413 (`ImageTooLargeError`).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mgm.inference.sampling import is_greedy
from mgm.serve.protocol import (
    MAX_TEMPERATURE,
    ImageInputError,
    ImageTooLargeError,
    RequestError,
)
from mgm.serve.limits import PendingImage, probe_base64_image, probe_image
from mgm.serve.security import ImagePolicy, decode_base64_image, decode_image_bytes

SSE_DONE = b"data: [DONE]\n\n"


# --- requests ----------------------------------------------------------------------------------------
class ImageURL(BaseModel):
    url: str
    detail: str | None = None  # accepted for compatibility; ignored


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_string(cls, value: Any) -> Any:
        # some clients send "image_url": "<url>" instead of {"url": "<url>"}
        return {"url": value} if isinstance(value, str) else value


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One message; `content` is a string or a list of text / image parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text_and_image_urls(self) -> tuple[str, list[str]]:
        """The text parts joined by newlines, and the image URLs in order."""
        if self.content is None:
            return "", []
        if isinstance(self.content, str):
            return self.content, []
        texts = [p.text for p in self.content if isinstance(p, TextPart)]
        urls = [p.image_url.url for p in self.content if isinstance(p, ImagePart)]
        return "\n".join(texts), urls


class StreamOptions(BaseModel):
    include_usage: bool = False


# field → (the value(s) meaning "off", which are accepted, and what the field would ask for)
UNSUPPORTED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "tools": ((None, []), "function calling"),
    "functions": ((None, []), "function calling"),
    "tool_choice": ((None, "none"), "function calling"),
    "function_call": ((None, "none"), "function calling"),
    "parallel_tool_calls": ((None, False, True), "function calling"),
    "response_format": ((None, {"type": "text"}), "structured output"),
    "logprobs": ((None, False), "log probabilities"),
    "top_logprobs": ((None, 0), "log probabilities"),
    "logit_bias": ((None, {}), "logit bias"),
    "presence_penalty": ((None, 0, 0.0), "a presence penalty"),
    "frequency_penalty": ((None, 0, 0.0), "a frequency penalty"),
    "repetition_penalty": ((None, 1, 1.0), "a repetition penalty"),
    "audio": ((None,), "audio output"),
    "modalities": ((None, ["text"]), "non-text output"),
    "prediction": ((None,), "predicted outputs"),
    "web_search_options": ((None,), "web search"),
}


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions` body. Unknown fields are kept (`model_extra`) so `check_supported`
    can refuse those this server cannot honour; harmless ones (`user`, `metadata`, ...) are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for max_tokens
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    seed: int | None = None

    @field_validator("n")
    @classmethod
    def _only_one(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"n={value} is not supported; only n=1")
        return value

    def check_supported(self) -> None:
        """RequestError (400) naming the first field asking for something this server does not do."""
        for name, (off, feature) in UNSUPPORTED_FIELDS.items():
            value = (self.model_extra or {}).get(name)
            if not any(value == o and type(value) is type(o) or value is o for o in off):
                raise RequestError(f"`{name}` is not supported by this server ({feature}); leave it out",
                                   param=name)
        if self.seed is not None and not is_greedy(self.temperature):
            raise RequestError("`seed` is not supported with sampling (temperature > 0): batched requests share "
                               "one random generator; use temperature 0 for reproducible answers", param="seed")

    def stop_list(self) -> list[str]:
        """`stop` as a list (empty when unset)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def token_limit(self, default: int) -> int:
        """`max_completion_tokens`, else `max_tokens`, else `default`."""
        return self.max_completion_tokens or self.max_tokens or default


# --- responses ---------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None = "stop"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: make_completion_id())
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage = Field(default_factory=Usage)


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "mgm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


def text_chars(messages: list[ChatMessage]) -> int:
    """Characters of all message text (what the prompt holds besides the template)."""
    return sum(len(message.text_and_image_urls()[0]) for message in messages)


def prompt_too_long(chars: int, limit: int) -> RequestError:
    """The 400 for messages over a worker's `max_prompt_chars` (raised by the worker and the controller)."""
    return RequestError(f"the messages hold {chars} characters, more than the model's context can take "
                        f"(at most {limit} characters)", param="messages")


MAX_JSON_BYTES_PER_CHAR = 12  # "\\ud83d\\ude00": one character, escaped as a surrogate pair
JSON_OVERHEAD_BYTES = 64 * 1024  # room for everything besides message text in a body


def body_surely_too_long(raw: bytes, limit: int) -> bool:
    """True when a chat body without image parts is too big for its text to fit `limit` characters.

    Checked before parsing: JSON spends at most `MAX_JSON_BYTES_PER_CHAR` bytes on one character, so
    such a body has more than `limit` characters of text. A megabytes-long prompt then costs a
    substring search, not a parse (which holds the GIL) and a forward to a worker.
    """
    return len(raw) > MAX_JSON_BYTES_PER_CHAR * limit + JSON_OVERHEAD_BYTES and b'"image_url"' not in raw


def body_too_long_error(raw: bytes, limit: int) -> RequestError:
    return RequestError(f"the request body is {len(raw)} bytes without any image: more text than the model's "
                        f"context can take (at most {limit} characters)", param="messages")


def make_completion_id() -> str:
    """A fresh `chatcmpl-...` id (one per completion; every chunk of a stream repeats it)."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def sse_event(payload: BaseModel | dict[str, Any]) -> bytes:
    """One server-sent event: `data: <json>\\n\\n` (None fields of models left out)."""
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json(exclude_none=True)
    else:
        text = json.dumps(payload)
    return b"data: " + text.encode() + b"\n\n"


# --- image parts -------------------------------------------------------------------------------------
def _read_local(path: Path, policy: ImagePolicy, what: str) -> bytes:
    if not policy.allow_local_files:
        raise ImageInputError(f"{what}: local file paths are not allowed by this server "
                              "(send a data: URL; the operator can enable local files)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageInputError(f"{what}: cannot read image file {str(path)!r} ({exc.strerror})") from None
    if size > policy.max_bytes:
        raise ImageTooLargeError(f"{what}: {str(path)!r} is {size} bytes, over the limit of {policy.max_bytes}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"{what}: cannot read image file {str(path)!r} ({exc.strerror})") from None


def _fetch_remote(url: str, policy: ImagePolicy, what: str) -> bytes:
    if not policy.allow_remote:
        raise ImageInputError(f"{what}: remote image URLs are not allowed by this server "
                              "(send a data: URL; the operator can enable remote fetching)")
    chunks: list[bytes] = []
    total = 0
    try:
        with httpx.stream("GET", url, timeout=policy.remote_timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise ImageInputError(f"{what}: fetching {url} gave HTTP {response.status_code}")
            for piece in response.iter_bytes():
                total += len(piece)
                if total > policy.max_bytes:  # stop downloading as soon as the limit is passed
                    raise ImageTooLargeError(f"{what}: {url} is over the limit of {policy.max_bytes} bytes")
                chunks.append(piece)
    except httpx.HTTPError as exc:
        raise ImageInputError(f"{what}: cannot fetch {url} ({type(exc).__name__}: {exc})") from None
    return b"".join(chunks)


def resolve_image_url(url: str, policy: ImagePolicy = ImagePolicy(), *, what: str = "image_url") -> bytes:
    """The raw image-file bytes an `image_url` refers to, by the rules in the module docstring.

    Data URLs are not decoded here beyond base64 (use `load_image_url` for a checked PIL image).
    Remote fetching is synchronous: call it through `asyncio.to_thread` from async code.
    """
    url = url.strip()
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise ImageInputError(f"{what}: only base64 data URLs are supported")
        if len(payload) * 3 // 4 > policy.max_bytes + 3:
            raise ImageTooLargeError(f"{what}: data URL is over the limit of {policy.max_bytes} bytes")
        try:
            return base64.b64decode(payload)
        except (binascii.Error, ValueError) as exc:
            raise ImageInputError(f"{what}: invalid base64 in data URL ({exc})") from None
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_remote(url, policy, what)
    if scheme == "file":
        return _read_local(Path(unquote(parsed.path)), policy, what)
    # no scheme (or a Windows drive letter): a local path
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        if not url:
            raise ImageInputError(f"{what}: empty URL")
        return _read_local(Path(url).expanduser(), policy, what)
    raise ImageInputError(f"{what}: unsupported URL scheme {scheme!r} (use data:, or http(s)/file when enabled)")


def load_image_url(url: str, policy: ImagePolicy = ImagePolicy(), *, mode: str | None = "RGB",
                   what: str = "image_url") -> Image.Image:
    """`resolve_image_url` + a limit-checked decode (`mode` "RGB" by default; None keeps the file's)."""
    if url.lstrip().startswith("data:"):
        return decode_base64_image(url.strip(), policy, mode=mode, what=what)
    return decode_image_bytes(resolve_image_url(url, policy, what=what), policy, mode=mode, what=what)


def probe_image_url(url: str, policy: ImagePolicy = ImagePolicy(), *, what: str = "image_url") -> PendingImage:
    """`resolve_image_url` + a header-only read (size checked, no pixel decoded; see mgm.serve.limits)."""
    if url.lstrip().startswith("data:"):
        return probe_base64_image(url.strip(), policy, what=what)
    return probe_image(resolve_image_url(url, policy, what=what), policy, what=what)


def image_part_count(messages: list[ChatMessage]) -> int:
    """How many image parts the messages hold (counted before any is fetched or read)."""
    return sum(len(message.text_and_image_urls()[1]) for message in messages)


def openai_error_status(exc: Exception) -> int:
    """HTTP status for an exception raised while handling an OpenAI request (RequestError → its own)."""
    return exc.status_code if isinstance(exc, RequestError) else 500
