"""The original MGM/LLaVA/FastChat serving protocol: JSON bodies, error codes and the NUL-delimited stream.

Every controller/worker endpoint takes and returns JSON. Generation answers are a stream of JSON objects
`{"text": prompt + generated_so_far, "error_code": N[, "image": base64_jpeg]}`, each followed by one NUL
byte (docs/original.md#serving). This module holds the pydantic models of those bodies, the constants both
sides agree on, helpers to write and parse the stream, and the typed request errors the HTTP layer maps
to status codes (pure Python + pydantic: no web framework import here).
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# seconds without a beat before a heart-beat-checked worker is dropped / between a worker's beats (docs/original.md#templates)
from mgm.constants import CONTROLLER_HEART_BEAT_EXPIRATION, WORKER_HEART_BEAT_INTERVAL  # noqa: F401 (re-export)

# --- constants shared by controller and workers (docs/original.md#serving) --------------------------------
from mgm.constants import MODERATION_MSG, SERVER_ERROR_MSG  # noqa: E402,F401 (re-export)
EXCEEDS_MAX_TOKENS_MSG = "Exceeds max token length. Please start a new conversation, thanks."

# `error_code` values of a stream chunk.
ERROR_OK = 0  # normal chunk
ERROR_WORKER = 1  # the worker failed while generating (bad input, CUDA error, anything else)
ERROR_NO_WORKER = 2  # the controller knows no worker serving the requested model
ERROR_CONTROLLER_REQUEST = 3  # the controller's request to the worker failed (refused, timed out, HTTP error)
ERROR_BAD_REQUEST = 4  # the request itself was refused (not the original's: it answered every failure with 1)

MAX_NEW_TOKENS_CAP = 1024  # the worker never generates more than this per request
MAX_TEMPERATURE = 2.0  # the OpenAI API's upper bound; the CLI and both protocols use it
CHUNK_DELIMITER = b"\0"
MAX_WORKER_NAME_CHARS = 2048  # a worker's base URL
MAX_QUEUE_LENGTH = 1_000_000  # a heart beat's queue_length


# --- typed request errors (mapped to HTTP status codes by mgm.serve.security.install_error_handlers) --
class RequestError(ValueError):
    """A client sent something the server refuses. Subclasses ValueError so worker code that turns
    ValueError into an error chunk (original behaviour) also catches it."""

    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AuthenticationError(RequestError):
    """Missing or wrong API key."""

    status_code = 401
    code = "invalid_api_key"


class PayloadTooLargeError(RequestError):
    """The request body is over the server's limit."""

    status_code = 413
    code = "request_too_large"


class ImageInputError(RequestError):
    """An image could not be fetched or decoded, or its source is not allowed."""

    code = "invalid_image"


class ImageTooLargeError(ImageInputError):
    """An image is over the byte or pixel limit (a decompression bomb, say)."""

    status_code = 413
    code = "image_too_large"


class ForbiddenError(RequestError):
    """The request is authenticated (or needs no key) but this server does not allow it."""

    status_code = 403
    code = "forbidden"


class ModelNotFoundError(RequestError):
    """No live worker serves the requested model."""

    status_code = 404
    code = "model_not_found"


def error_body(message: str, *, error_type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """The JSON error body every mgm server returns (the OpenAI shape, so OpenAI clients parse it)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def request_error_body(exc: RequestError) -> dict[str, Any]:
    """`error_body` for a typed request error."""
    return error_body(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param)


# --- bodies ------------------------------------------------------------------------------------------
class WorkerStatus(BaseModel):
    """`POST /worker_get_status` answer, also sent inside a registration."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_names: list[str]
    speed: float = 1
    queue_length: int = 0


class RegisterWorkerRequest(BaseModel):
    """`POST /register_worker` body. `worker_status` is accepted (original workers send it) but never
    trusted: the controller always asks the worker itself (`POST <worker_name>/worker_get_status`)."""

    worker_name: str = Field(min_length=1, max_length=MAX_WORKER_NAME_CHARS,
                             description="the worker's base URL, e.g. http://127.0.0.1:21002")
    check_heart_beat: bool = False
    worker_status: WorkerStatus | None = None


class HeartBeatRequest(BaseModel):
    """`POST /receive_heart_beat` body (a queue length is never negative: it would win every dispatch)."""

    worker_name: str = Field(max_length=MAX_WORKER_NAME_CHARS)
    queue_length: int = Field(0, ge=0, le=MAX_QUEUE_LENGTH)


class DeregisterWorkerRequest(BaseModel):
    """`POST /deregister_worker` body (an mgm addition: a worker leaving, or its operator removing it)."""

    worker_name: str = Field(min_length=1, max_length=MAX_WORKER_NAME_CHARS)


class HeartBeatResponse(BaseModel):
    """`POST /receive_heart_beat` answer; `exist` false tells the worker to register again."""

    exist: bool


class GetWorkerAddressRequest(BaseModel):
    """`POST /get_worker_address` body."""

    model: str


class GetWorkerAddressResponse(BaseModel):
    """`POST /get_worker_address` answer; "" when no worker serves the model."""

    address: str


class ListModelsResponse(BaseModel):
    """`POST /list_models` answer."""

    models: list[str]


class GenerateParams(BaseModel):
    """`POST /worker_generate_stream` body (as sent by the Gradio UI and test_message).

    `prompt` is the fully templated prompt; `images` are base64-encoded image files, one per `<image>`
    in the prompt. Unknown keys are kept (and forwarded by the controller) because clients of the
    original protocol send extra fields.
    """

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str
    images: list[str] = Field(default_factory=list)
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    stop: str | None = None
    gen_image: bool = False
    use_ocr: bool = False

    @field_validator("images", mode="before")
    @classmethod
    def _none_images(cls, value: Any) -> Any:
        # the original clients send `images: null` for text-only requests
        return [] if value is None else value

    @field_validator("max_new_tokens")
    @classmethod
    def _cap_tokens(cls, value: int) -> int:
        # the original worker silently caps at 1024 (min(requested, 1024)); keep that, don't reject
        return min(value, MAX_NEW_TOKENS_CAP)


class StreamChunk(BaseModel):
    """One message of the generation stream."""

    text: str
    error_code: int = ERROR_OK
    image: str | None = None  # base64 JPEG of a generated image (final chunk of a gen_image request)

    def to_bytes(self) -> bytes:
        """The wire form: JSON + NUL (`image` left out when absent, as the original does)."""
        return encode_chunk(self.model_dump(exclude_none=True))


# --- stream helpers ----------------------------------------------------------------------------------
def encode_chunk(chunk: Mapping[str, Any]) -> bytes:
    """`json.dumps(chunk).encode() + b"\\0"` — byte-identical to the original worker's chunks."""
    return json.dumps(dict(chunk)).encode() + CHUNK_DELIMITER


def error_chunk(error_code: int, text: str = SERVER_ERROR_MSG) -> bytes:
    """An encoded error chunk, e.g. `error_chunk(ERROR_NO_WORKER)`."""
    return encode_chunk({"text": text, "error_code": error_code})


class FrameTooLargeError(ValueError):
    """A stream message grew past the reader's bound without its NUL delimiter."""


class ChunkSplitter:
    """Re-frames byte pieces into the JSON messages between NUL bytes, reading each byte once.

    Only the new piece is searched for a delimiter (a stream without one costs linear time, not a
    re-scan of the buffer per piece); `max_frame` bounds the bytes held for one unfinished message
    (FrameTooLargeError past it).
    """

    def __init__(self, max_frame: int | None = None) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, piece: bytes) -> list[bytes]:
        """The messages `piece` completes (delimiter removed, blank ones skipped)."""
        messages: list[bytes] = []
        start = 0
        while (end := piece.find(CHUNK_DELIMITER, start)) >= 0:
            self._buffer += piece[start:end]
            if self._buffer.strip():
                messages.append(bytes(self._buffer))
            self._buffer.clear()
            start = end + 1
        self._buffer += piece[start:]
        if self.max_frame is not None and len(self._buffer) > self.max_frame:
            raise FrameTooLargeError(f"a stream message is over {self.max_frame} bytes without a NUL delimiter")
        return messages

    def rest(self) -> bytes | None:
        """A trailing message without a final NUL, if any."""
        return bytes(self._buffer) if self._buffer.strip() else None


def split_chunks(data: Iterable[bytes], max_frame: int | None = None) -> Iterator[bytes]:
    """Re-frame arbitrary byte pieces into the raw JSON messages between NUL bytes (delimiter removed).

    A message split across pieces (even inside a multi-byte UTF-8 character) is joined before it is
    yielded; empty messages are skipped; a trailing message without a final NUL is still yielded.
    `max_frame`: FrameTooLargeError when one message grows past it.
    """
    splitter = ChunkSplitter(max_frame)
    for piece in data:
        yield from splitter.feed(piece)
    if (rest := splitter.rest()) is not None:
        yield rest


async def asplit_chunks(data: AsyncIterable[bytes], max_frame: int | None = None) -> AsyncIterator[bytes]:
    """Async twin of `split_chunks` (for httpx `aiter_bytes()`)."""
    splitter = ChunkSplitter(max_frame)
    async for piece in data:
        for message in splitter.feed(piece):
            yield message
    if (rest := splitter.rest()) is not None:
        yield rest


def iter_chunks(data: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Parse a NUL-delimited stream (any byte pieces, e.g. `response.iter_bytes()`) into dicts."""
    for message in split_chunks(data):
        yield json.loads(message.decode("utf-8"))


async def aiter_chunks(data: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Async twin of `iter_chunks`."""
    async for message in asplit_chunks(data):
        yield json.loads(message.decode("utf-8"))
