"""Safety pieces shared by the mgm servers: API-key check, request-body limit, safe image decoding,
and the handlers that turn typed request errors into JSON error answers.

- `api_key_dependency(key)`: a FastAPI dependency accepting `Authorization: Bearer <key>` or
  `x-api-key: <key>`; anything else → 401 JSON.
- `BodySizeLimitMiddleware`: pure ASGI middleware → 413 JSON when a body is over the limit (checked on
  Content-Length and while a chunked body streams in).
- `decode_image_bytes` / `decode_base64_image`: PIL decode with byte and pixel limits checked on the
  header before any pixel is decoded (a decompression bomb never gets decoded); no global PIL state
  is changed. Errors are `ImageInputError` (400) / `ImageTooLargeError` (413).
- `json_body(Model)`: a FastAPI dependency parsing the JSON body with pydantic's own parser, so invalid
  UTF-8, lone surrogates (`"\\udcff"`) and deep nesting are 400s naming the problem, never 500s.
- `install_error_handlers(app)`: every error is JSON in the route's own format (`error_response`):
  `{"error": {...}}` (the OpenAI shape) on `/v1/...`; elsewhere the same plus `text` and `error_code`,
  which clients of the original protocol show. Anything unexpected is a logged 500 in that format.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from PIL import Image
from pydantic import BaseModel, ValidationError

from mgm.constants import MAX_IMAGE_PIXELS
from mgm.serve.protocol import (
    ERROR_BAD_REQUEST,
    ERROR_WORKER,
    AuthenticationError,
    ImageInputError,
    ImageTooLargeError,
    PayloadTooLargeError,
    RequestError,
    error_body,
    request_error_body,
)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # a request with a few base64 images fits easily
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # the CLI's limit too (mgm.data.image.open_image)
LARGE_BODY_BYTES = 1 << 20  # bodies above this are parsed off the event loop, one at a time
LARGE_BODY_SLOTS = 1  # large bodies parsed at once per server (install_large_body_gate)
DEFAULT_BODY_TIMEOUT = 60.0  # seconds for a whole request body (64 MB at about 10 Mbit/s)
REJECTED_STATE = "mgm_body_rejected"  # request.state flag: the body middleware already answered and logged
DEFAULT_IDLE_TIMEOUT = 15.0  # seconds without a byte of a body that is not complete yet


@dataclass(frozen=True)
class ImagePolicy:
    """What image inputs a server accepts.

    max_bytes / max_pixels: limits on the encoded file and on width*height.
    allow_local_files: accept local paths and file:// URLs (off: a remote client could read server files).
    allow_remote: accept http(s) URLs, fetched by the server (off: server-side request forgery).
    remote_timeout: seconds for a remote fetch.
    """

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    allow_local_files: bool = False
    allow_remote: bool = False
    remote_timeout: float = 10.0


# --- API key -----------------------------------------------------------------------------------------
def auth_headers(api_key: str | None) -> dict[str, str]:
    """Headers a client (worker, UI, helper script) sends to a server protected by `api_key`."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key")


def check_api_key(request: Request, api_key: str | None) -> None:
    """Raise `AuthenticationError` unless the request carries `api_key` (no-op when `api_key` is None)."""
    if not api_key:
        return
    presented = _presented_key(request)
    # compare_digest: the comparison time does not reveal how much of the key matched
    if presented is None or not hmac.compare_digest(presented.encode(), api_key.encode()):
        raise AuthenticationError(
            "missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")


def api_key_dependency(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency enforcing `api_key` (use in `dependencies=[Depends(...)]`)."""

    async def require_api_key(request: Request) -> None:
        check_api_key(request, api_key)

    return require_api_key


def presents_key(request: Request, api_key: str | None) -> bool:
    """True when `api_key` is set and the request carries it."""
    if not api_key:
        return False
    presented = _presented_key(request)
    return presented is not None and hmac.compare_digest(presented.encode(), api_key.encode())


# --- JSON bodies -------------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def parse_json_body(raw: bytes, model: type[M]) -> M:
    """Validate a request body as `model`; every failure is a `RequestError` (400) saying what is wrong.

    pydantic's JSON parser (not `json.loads`) refuses invalid UTF-8, lone surrogate escapes and nesting
    deeper than its recursion limit with a message and position, instead of raising RecursionError or
    letting a lone surrogate reach the tokenizer.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestError(f"invalid request body: {format_validation_errors(exc.errors())}") from None


def json_body(model: type[M], large_parser: Callable[[bytes, type[M]], M] = parse_json_body
              ) -> Callable[[Request], Awaitable[M]]:
    """A FastAPI dependency: the request body parsed by `parse_json_body`; a large one by `large_parser`
    in a thread, one at a time per app (`install_large_body_gate`)."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        if len(raw) <= LARGE_BODY_BYTES:
            return parse_json_body(raw, model)
        gate = getattr(request.app.state, "large_body_gate", None)
        async with gate if gate is not None else contextlib.nullcontext():
            return await asyncio.to_thread(large_parser, raw, model)

    return parse


def install_large_body_gate(app: FastAPI, slots: int = LARGE_BODY_SLOTS) -> None:
    """Let at most `slots` large bodies (over LARGE_BODY_BYTES) be parsed at once on `app`.

    Parsing megabytes of JSON holds the interpreter for tens of milliseconds (the thread does not free
    the event loop of that); several at once starve every other request of the process. Only the parse
    waits here, not the upload: a client trickling its body cannot hold the gate.
    """
    app.state.large_body_gate = asyncio.Semaphore(slots)


# --- body size ---------------------------------------------------------------------------------------
def _json_413(limit: int, path: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(route_error_body(path, error_body(f"request body exceeds the limit of {limit} bytes",
                                                        code=PayloadTooLargeError.code), 413)).encode()
    start = {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, body


class BodySizeLimitMiddleware:
    """Refuse HTTP request bodies larger than `max_bytes` with a 413 JSON answer, and bodies that do not
    arrive in time with a 408: no gap between pieces over `idle_timeout`, the whole body within
    `body_timeout` seconds (a trickling upload would otherwise hold its connection for ever)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._reject(send, limit, scope.get("path", ""))
                    return
        received = 0
        started = False
        rejected = False
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, rejected, started, body_done
            if rejected:
                return {"type": "http.disconnect"}
            if body_done:  # after the body: waiting for a disconnect (streaming answers) is not timed
                return await receive()
            wait = min(self.idle_timeout, deadline - asyncio.get_running_loop().time())
            try:
                async with asyncio.timeout(max(wait, 0.001)):  # no task per piece (wait_for makes one on 3.11)
                    message = await receive()
            except TimeoutError:
                rejected = True
                scope.setdefault("state", {})[REJECTED_STATE] = True  # answered here: no second log line
                logging.getLogger("mgm.serve").info("request body of %s not received in time: answered 408",
                                                    scope.get("path", ""))
                if not started:
                    started = True
                    await self._send_error(send, 408, "the request body did not arrive in time", "request_timeout",
                                           scope.get("path", ""))
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:  # chunked upload without (or lying about) Content-Length
                    rejected = True
                    scope.setdefault("state", {})[REJECTED_STATE] = True
                    if not started:
                        started = True
                        await self._reject(send, limit, scope.get("path", ""))
                    # the app sees a disconnect and stops reading; whatever it answers is dropped below
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    @staticmethod
    async def _reject(send: Callable, limit: int, path: str) -> None:
        start, body = _json_413(limit, path)
        await send(start)
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_error(send: Callable, status: int, message: str, code: str, path: str) -> None:
        body = json.dumps(route_error_body(path, error_body(message, code=code), status)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class ResponseHeaderMiddleware:
    """Add fixed headers to every HTTP answer (pure ASGI: streaming answers pass through untouched)."""

    def __init__(self, app: Callable[..., Awaitable[None]], headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, add_headers)


# --- images ------------------------------------------------------------------------------------------
def decode_image_bytes(data: bytes, policy: ImagePolicy = ImagePolicy(), *, mode: str | None = None,
                       what: str = "image") -> Image.Image:
    """Decode an image file's bytes with limits; `mode` (e.g. "RGB") converts after decoding.

    Raises ImageTooLargeError (413) over `policy.max_bytes` or `policy.max_pixels`, ImageInputError (400)
    for anything PIL cannot read. `what` names the input in messages (e.g. "messages[0].content[1]").
    """
    if len(data) > policy.max_bytes:
        raise ImageTooLargeError(f"{what}: {len(data)} bytes is over the limit of {policy.max_bytes} bytes")
    try:
        # Image.open reads only the header; the pixel count is known before any decoding work.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what}: {exc}") from None
    except Image.UnidentifiedImageError:  # its message names the BytesIO, not the input
        raise ImageInputError(f"{what}: not a readable image file (not an image format PIL can read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{what}: not a readable image file ({exc})") from None
    width, height = image.size
    if width * height > policy.max_pixels:
        raise ImageTooLargeError(
            f"{what}: {width}x{height} = {width * height} pixels is over the limit of {policy.max_pixels}")
    try:
        image.load()
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{what}: image data is corrupt ({exc})") from None
    return image


def decode_base64_image(b64: str, policy: ImagePolicy = ImagePolicy(), *, mode: str | None = None,
                        what: str = "image") -> Image.Image:
    """Decode a base64 image (an optional `data:...;base64,` prefix is accepted) with limits."""
    if b64.startswith("data:"):
        header, sep, b64 = b64.partition(",")
        if not sep or ";base64" not in header:
            raise ImageInputError(f"{what}: only base64 data URLs are supported")
    # reject before decoding: base64 is 4 characters per 3 bytes
    if len(b64) * 3 // 4 > policy.max_bytes + 3:
        raise ImageTooLargeError(f"{what}: about {len(b64) * 3 // 4} bytes is over the limit of "
                                 f"{policy.max_bytes} bytes")
    try:
        data = base64.b64decode(b64)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{what}: invalid base64 ({exc})") from None
    return decode_image_bytes(data, policy, mode=mode, what=what)


# --- error handlers ----------------------------------------------------------------------------------
def route_error_body(path: str, body: dict[str, Any], status_code: int) -> dict[str, Any]:
    """An `error_body` in the format of the route at `path`: as is on `/v1/...` (OpenAI clients), plus
    `text` (the message) and `error_code` elsewhere (original-protocol clients show `text`)."""
    if path.startswith("/v1/"):
        return body
    code = ERROR_WORKER if status_code >= 500 else ERROR_BAD_REQUEST
    return {"text": body["error"]["message"], "error_code": code, **body}


def error_response(request: Request, exc: RequestError) -> JSONResponse:
    """`exc` as a JSON answer in the format of `request`'s route."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(route_error_body(request.url.path, request_error_body(exc), exc.status_code),
                        status_code=exc.status_code, headers=headers)


async def request_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """`RequestError` → its HTTP status with a JSON body in the route's format."""
    assert isinstance(exc, RequestError)
    return error_response(request, exc)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Bad fields FastAPI found itself (query/path parameters): 400 in the route's format."""
    assert isinstance(exc, RequestValidationError)
    return error_response(request, RequestError(f"invalid request: {format_validation_errors(exc.errors())}"))


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Unknown routes (404), wrong methods (405) and other HTTP errors in the route's own format."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.url.path[:200]!r} on this server"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path[:200]!r}"
    else:
        message = str(exc.detail)[:300]
    body = error_body(message, code={404: "not_found", 405: "method_not_allowed"}.get(status, "http_error"))
    return JSONResponse(route_error_body(request.url.path, body, status), status_code=status,
                        headers=getattr(exc, "headers", None))


async def disconnect_handler(request: Request, exc: Exception) -> Response:
    """A client that left while sending its body: one INFO line, no traceback (nobody reads an answer)."""
    if not request.scope.get("state", {}).get(REJECTED_STATE):
        logging.getLogger("mgm.serve").info("client disconnected while sending %s %s", request.method,
                                            request.url.path[:200])
    return Response(status_code=400)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything else: logged with its traceback, answered 500 in the route's format (never plain text)."""
    logging.getLogger("mgm.serve").error("unhandled error on %s", request.url.path, exc_info=exc)
    body = error_body(f"internal server error ({type(exc).__name__})", error_type="server_error",
                      code="internal_error")
    return JSONResponse(route_error_body(request.url.path, body, 500), status_code=500)


def format_validation_errors(errors: Any) -> str:
    """One line from pydantic/FastAPI error dicts, e.g. "messages: Field required" (inputs left out)."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid"


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on `app`."""
    app.add_exception_handler(RequestError, request_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(ClientDisconnect, disconnect_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
