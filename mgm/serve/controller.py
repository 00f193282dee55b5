"""The controller: a registry of model workers that dispatches requests to them (docs/original.md#serving).

    python -m mgm.serve.controller --host 127.0.0.1 --port 21001 --dispatch-method shortest_queue

Workers register (`/register_worker`) and send heart beats (`/receive_heart_beat`); the UI asks for a
worker address per model (`/get_worker_address`) or streams through the controller
(`/worker_generate_stream`). All the original POST endpoints and JSON bodies are kept. Additions:
`GET /health`, an OpenAI-compatible `POST /v1/chat/completions` + `GET /v1/models[/{id}]` proxied to a
worker serving the requested model, keys, a request-body limit, and these fixes of the original:

- registering is its own privilege: `--worker-api-key` (never the clients' `--api-key`) guards
  `/register_worker` and `/receive_heart_beat`; a controller bound beyond loopback without it refuses
  registrations; the controller always fetches a new worker's status itself (a client-sent
  `worker_status` is ignored) and only from hosts `WorkerHostPolicy` allows; the worker key is sent
  only to workers that registered with it;
- every worker expires: heart-beat-checked ones when beats stop, the others when the controller's own
  status poll (every sweep) fails;
- a worker that cannot be reached is dropped at once and the request goes to another worker of the
  same model (for streams: only before anything was sent to the client);
- no request to an empty address after a "no worker" answer (docs/original.md#fixed-defects), every worker request has a
  timeout, worker URLs are normalised (one entry per scheme/host/port/path), the controller's own
  address is refused;
- what a worker sends is bounded (mgm.serve.upstream_limits: status size and model names, stream
  messages and totals, non-stream answers) and logged as summaries; heart beats come from the worker's
  host with a queue length >= 0; `POST /deregister_worker` removes a worker.

`create_app(settings)` builds the FastAPI app (nothing is built at import); `main(argv)` runs it with
uvicorn. The registry is only touched from the event loop (all endpoints are `async`), so it needs no
lock.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mgm.program import program_name
from mgm.errors import UserError, exit_on_user_error
from mgm.serve.logging_utils import build_logger
from mgm.serve.openai_protocol import (
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    body_surely_too_long,
    body_too_long_error,
    image_part_count,
    prompt_too_long,
    sse_event,
    text_chars,
)
from mgm.serve.protocol import (
    CHUNK_DELIMITER,
    CONTROLLER_HEART_BEAT_EXPIRATION,
    ERROR_CONTROLLER_REQUEST,
    ERROR_NO_WORKER,
    AuthenticationError,
    DeregisterWorkerRequest,
    ForbiddenError,
    FrameTooLargeError,
    GenerateParams,
    GetWorkerAddressRequest,
    HeartBeatRequest,
    ModelNotFoundError,
    RegisterWorkerRequest,
    RequestError,
    WorkerStatus,
    asplit_chunks,
    error_body,
    error_chunk,
)
from mgm.serve.security import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    BodySizeLimitMiddleware,
    ResponseHeaderMiddleware,
    api_key_dependency,
    auth_headers,
    install_error_handlers,
    install_large_body_gate,
    json_body,
    presents_key,
)
from mgm.serve.chat_body import parse_chat_request
from mgm.serve.limits import RequestLimits, check_image_count, check_stops, over_long_prompt
from mgm.serve.upstream_limits import (
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_STREAM_BYTES,
    DEFAULT_MAX_WORKERS,
    UpstreamLimits,
    WorkerAnswerTooLarge,
    status_summary,
)
from mgm.serve.worker_client import Upstream, WorkerClient
from mgm.serve.worker_registry import (  # noqa: F401 (WorkerInfo, normalize_worker_name: re-exported)
    DISPATCH_METHODS,
    SELF_ID_HEADER,
    WorkerHostPolicy,
    WorkerInfo,
    WorkerRegistry,
    fetch_worker_status,
    is_loopback,
    normalize_worker_name,
    worker_is_down,
)

RegisterBody = Annotated[RegisterWorkerRequest, Depends(json_body(RegisterWorkerRequest))]
HeartBeatBody = Annotated[HeartBeatRequest, Depends(json_body(HeartBeatRequest))]
AddressBody = Annotated[GetWorkerAddressRequest, Depends(json_body(GetWorkerAddressRequest))]
GenerateBody = Annotated[GenerateParams, Depends(json_body(GenerateParams))]
DeregisterBody = Annotated[DeregisterWorkerRequest, Depends(json_body(DeregisterWorkerRequest))]

LOGGER_NAME = "mgm.serve.controller"  # not __name__: that is "__main__" under `python -m`
API_KEY_ENV = "MGM_API_KEY"
WORKER_API_KEY_ENV = "MGM_WORKER_API_KEY"


@dataclass(frozen=True)
class ControllerSettings:
    """Everything the controller app needs; the CLI flags map 1:1 onto these fields.

    api_key: clients must send it (Bearer or x-api-key) on every client route but GET /health; None = open.
    worker_api_key: the worker key. Workers must send it to register and beat; the controller sends it
        to the workers that registered with it. None: registration is open on a loopback-bound
        controller (loopback worker URLs only) and refused when it binds beyond loopback.
    worker_allow_hosts: worker URL hosts (names, IPs, networks) the controller accepts; () = see above.
    heart_beat_expiration: seconds without a beat (or successful status poll) after which a worker is dropped.
    heart_beat_check_interval: seconds between expiry sweeps and status polls; None = the expiration.
    connect_timeout: seconds to connect to a worker, and the whole timeout of a status poll.
    worker_timeout: seconds a proxied generation may wait for the worker's next bytes.
    max_body_bytes: request bodies above this get 413.
    log_dir: folder of controller.log (None = $MGM_LOGDIR, else ~/.local/state/mgm/logs); used by main() only.
    """

    host: str = "127.0.0.1"
    port: int = 21001
    dispatch_method: str = "shortest_queue"
    api_key: str | None = None
    worker_api_key: str | None = None
    worker_allow_hosts: tuple[str, ...] = ()
    heart_beat_expiration: float = float(CONTROLLER_HEART_BEAT_EXPIRATION)
    heart_beat_check_interval: float | None = None
    connect_timeout: float = 5.0
    worker_timeout: float = 120.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_dir: str | None = None
    max_workers: int = DEFAULT_MAX_WORKERS
    max_worker_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_worker_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_worker_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    def __post_init__(self) -> None:
        if self.dispatch_method not in DISPATCH_METHODS:
            raise UserError(f"--dispatch-method {self.dispatch_method!r} is not one of {', '.join(DISPATCH_METHODS)}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port} is not a TCP port (0-65535)")
        for name in ("heart_beat_expiration", "connect_timeout", "worker_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.heart_beat_check_interval is not None and self.heart_beat_check_interval <= 0:
            raise UserError(f"--heart-beat-check-interval must be > 0, got {self.heart_beat_check_interval}")
        for name in ("max_body_bytes", "max_workers", "max_worker_answer_bytes", "max_worker_frame_bytes",
                     "max_worker_stream_bytes"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for flag, env, key in (("--api-key", API_KEY_ENV, self.api_key),
                               ("--worker-api-key", WORKER_API_KEY_ENV, self.worker_api_key)):
            if key == "":  # an empty key must not quietly mean "no authentication"
                raise UserError(f"{flag} (or ${env}) is empty: give a key, or leave it out for none")
        if self.api_key and self.api_key == self.worker_api_key:
            raise UserError("--worker-api-key must differ from --api-key: anyone holding the worker key can "
                            "register workers and receive users' prompts")
        try:
            WorkerHostPolicy.parse(",".join(self.worker_allow_hosts))
        except ValueError as exc:
            raise UserError(f"--worker-allow-hosts: {exc}") from None

    @property
    def check_interval(self) -> float:
        return self.heart_beat_check_interval or self.heart_beat_expiration

    @property
    def registration_open(self) -> bool:
        """Registration needs no key (loopback-bound controller without --worker-api-key)."""
        return not self.worker_api_key and is_loopback(self.host)

    def upstream_limits(self) -> UpstreamLimits:
        return UpstreamLimits(max_answer_bytes=self.max_worker_answer_bytes, max_frame_bytes=self.max_worker_frame_bytes,
                              max_stream_bytes=self.max_worker_stream_bytes, max_workers=self.max_workers)

    def host_policy(self) -> WorkerHostPolicy:
        return WorkerHostPolicy(self.worker_allow_hosts, loopback_only=not self.worker_api_key)


def check_request_bounds(body: ChatCompletionRequest, registry: WorkerRegistry) -> None:
    """Refuse, as every worker of the model would (their statuses give their bounds), a request with too
    many or too long stop strings or too many images, without forwarding it."""
    stop_strings = registry.request_bound(body.model, "max_stop_strings")
    stop_chars = registry.request_bound(body.model, "max_stop_chars")
    images = registry.request_bound(body.model, "max_images")
    if stop_strings is not None and stop_chars is not None:
        check_stops(body.stop_list(), RequestLimits(max_stop_strings=stop_strings, max_stop_chars=stop_chars))
    if images is not None:
        check_image_count(image_part_count(body.messages), RequestLimits(max_images=images))


def is_own_address(worker_name: str, settings: ControllerSettings) -> bool:
    """True when `worker_name` names this controller's own port on a loopback or its bound host (the
    status fetch also recognises the controller by its SELF_ID_HEADER, whatever the address)."""
    parts = urlsplit(worker_name)
    host = (parts.hostname or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    bound = settings.host.lower().strip("[]")
    if port != settings.port:
        return False
    return host == bound or (is_loopback(host) and (is_loopback(bound) or bound in ("0.0.0.0", "::")))


def beat_comes_from(worker_name: str, client_host: str | None) -> bool:
    """Whether a heart beat for `worker_name` may come from `client_host`: the worker's own IP (any
    loopback address for a loopback worker); a worker named by a host name is not resolved (True)."""
    host = (urlsplit(worker_name).hostname or "").lower()
    if client_host is None:
        return False
    if is_loopback(host):
        return is_loopback(client_host)
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(client_host)
    except ValueError:
        return True


async def worker_credentials(request: Request) -> bool:
    """Admit a worker-side call (a FastAPI dependency); True when it carries the worker key (the
    controller then sends that worker the key)."""
    settings: ControllerSettings = request.app.state.settings
    if settings.worker_api_key:
        if not presents_key(request, settings.worker_api_key):
            raise AuthenticationError("registering and heart beats need the worker key (--worker-api-key "
                                      "of this controller, given to workers as their --api-key)")
        return True
    if not settings.registration_open:
        raise ForbiddenError(f"worker registration is disabled: this controller listens on {settings.host} "
                             "without --worker-api-key; give the controller and its workers a worker key")
    return False


WorkerCredentials = Annotated[bool, Depends(worker_credentials)]


def create_app(settings: ControllerSettings | None = None, *, registry: WorkerRegistry | None = None) -> FastAPI:
    """Build the controller app. `registry` may be injected (tests); by default a fresh one."""
    settings = settings or ControllerSettings()
    if registry is None:
        registry = WorkerRegistry(settings.dispatch_method)
    logger = logging.getLogger(LOGGER_NAME)
    limits = settings.upstream_limits()
    self_id = uuid.uuid4().hex  # sent on every answer: a "worker" answering with it is this controller
    runtime = WorkerClient(registry, logger, worker_api_key=settings.worker_api_key,
                           connect_timeout=settings.connect_timeout, limits=limits, self_id=self_id)
    host_policy = settings.host_policy()

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(settings.check_interval)
            try:
                await runtime.poll_unbeating()
                for name in registry.remove_expired(settings.heart_beat_expiration):
                    logger.info("remove stale worker (not heard from for %.1f s): %s",
                                settings.heart_beat_expiration, name)
            except Exception:  # keep sweeping whatever happens
                logger.exception("heart-beat expiry sweep failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.open(settings.worker_timeout)
        sweeper = asyncio.create_task(expire_loop())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await runtime.close()

    app = FastAPI(title="mgm controller", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.registry = registry
    install_error_handlers(app)
    install_large_body_gate(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
                       idle_timeout=min(DEFAULT_IDLE_TIMEOUT, settings.body_timeout))
    app.add_middleware(ResponseHeaderMiddleware, headers={SELF_ID_HEADER: self_id})
    router = APIRouter(dependencies=[Depends(api_key_dependency(settings.api_key))])

    workers_router = APIRouter()

    # --- original protocol: the workers' side ---
    @workers_router.post("/register_worker")
    async def register_worker(body: RegisterBody, keyed: WorkerCredentials) -> None:
        name = host_policy.check(body.worker_name)  # before any request goes to that URL
        if is_own_address(name, settings):
            raise RequestError(f"{name} is this controller's own address, not a worker", param="worker_name")
        known = name in registry.workers
        if not known and len(registry) >= settings.max_workers:
            raise ForbiddenError(f"this controller already holds {settings.max_workers} workers (--max-workers)")
        logger.info("register %s worker: %s", "an existing" if known else "a new", name)
        if body.worker_status is not None:
            logger.debug("ignoring the worker_status sent with the registration of %s", name)
        status = await runtime.status_of(name, auth_headers(settings.worker_api_key) if keyed else {})
        if not isinstance(status, WorkerStatus):
            reason = str(status).splitlines()[0][:300] if str(status) else ""
            raise RequestError(f"cannot verify worker {name}: POST {name}/worker_get_status failed "
                               f"({type(status).__name__}: {reason})", param="worker_name")
        if name not in registry.workers and len(registry) >= settings.max_workers:  # filled while we waited
            raise ForbiddenError(f"this controller already holds {settings.max_workers} workers (--max-workers)")
        registry.register(name, body.check_heart_beat, status, keyed=keyed)
        logger.info("register done: %s, %s", name, status_summary(status))

    @workers_router.post("/receive_heart_beat")
    async def receive_heart_beat(request: Request, body: HeartBeatBody, keyed: WorkerCredentials
                                 ) -> dict[str, bool]:
        name = normalize_worker_name(body.worker_name)
        info = registry.workers.get(name)
        if info is not None and not beat_comes_from(name, request.client.host if request.client else None):
            raise ForbiddenError(f"a heart beat for {name} must come from that worker's host", param="worker_name")
        exist = registry.heart_beat(name, body.queue_length)
        if not exist:
            logger.info("receive unknown heart beat: %.300s", body.worker_name)
        return {"exist": exist}

    @workers_router.post("/deregister_worker")
    async def deregister_worker(body: DeregisterBody, keyed: WorkerCredentials) -> dict[str, bool]:
        name = normalize_worker_name(body.worker_name)
        info = registry.workers.get(name)
        if info is not None and info.keyed and not keyed:
            raise ForbiddenError(f"{name} registered with the worker key; removing it needs that key too")
        removed = registry.remove(name)
        if removed:
            logger.info("deregister worker: %s", name)
        return {"removed": removed}

    # --- original protocol: the clients' side ---
    @router.post("/refresh_all_workers")
    async def refresh_all_workers() -> None:
        await runtime.refresh(registry.workers, drop=lambda status: True)

    @router.post("/list_models")
    async def list_models() -> dict[str, list[str]]:
        return {"models": registry.list_models()}

    @router.post("/get_worker_address")
    async def get_worker_address(body: AddressBody) -> dict[str, str]:
        address = registry.get_worker_address(body.model)
        logger.info("get_worker_address: model=%.200s, address=%s", body.model, address or "(none)")
        return {"address": address}

    async def relay_chunks(upstream: Upstream) -> AsyncIterator[bytes]:
        try:  # re-frame: pass each JSON message through byte-for-byte, one per yield
            async for message in asplit_chunks(upstream.relay(limits.max_stream_bytes), limits.max_frame_bytes):
                yield message + CHUNK_DELIMITER
        except (FrameTooLargeError, WorkerAnswerTooLarge) as exc:
            logger.warning("worker stream cut: %s: %s", upstream.address, exc)
            await upstream.response.aclose()
            yield error_chunk(ERROR_CONTROLLER_REQUEST)
        except httpx.HTTPError as exc:
            logger.info("worker stream failed: %s, %s: %s", upstream.address, type(exc).__name__, exc)
            if worker_is_down(exc) and registry.remove(upstream.address):
                logger.warning("worker %s is down: dropped", upstream.address)
            yield error_chunk(ERROR_CONTROLLER_REQUEST)

    @router.post("/worker_generate_stream")
    async def worker_generate_stream(params: GenerateBody) -> Response:
        limit = registry.prompt_char_limit(params.model or "")
        if limit is not None and len(params.prompt) > limit:  # the worker's own answer, without forwarding
            raise over_long_prompt(len(params.prompt), limit)
        upstream = await runtime.open_worker(params.model or "", "/worker_generate_stream",
                                             params.model_dump_json().encode(), read="first")
        if upstream is None:
            # the original went on to POST to "" after this chunk (docs/original.md#fixed-defects); one chunk and done
            logger.info("no worker: %s", params.model)
            return StreamingResponse(iter([error_chunk(ERROR_NO_WORKER)]))
        if isinstance(upstream, Exception):
            return StreamingResponse(iter([error_chunk(ERROR_CONTROLLER_REQUEST)]))
        status = upstream.response.status_code
        if status != 200:
            await upstream.response.aclose()
            logger.error("worker %s answered HTTP %s: %r", upstream.address, status, upstream.head[:300])
            if 400 <= status < 500:  # the worker's own error (with text / error_code): relay it
                return Response(upstream.head, status_code=status,
                                media_type=upstream.response.headers.get("content-type", "application/json"))
            return StreamingResponse(iter([error_chunk(ERROR_CONTROLLER_REQUEST)]))
        return StreamingResponse(relay_chunks(upstream))

    @router.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return await runtime.aggregate_status()

    # --- OpenAI-compatible routes ---
    @router.get("/v1/models")
    async def v1_models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=m) for m in registry.list_models()]).model_dump()

    @router.get("/v1/models/{model_id:path}")
    async def v1_model(model_id: str) -> dict[str, Any]:
        if model_id not in registry.list_models():
            raise ModelNotFoundError(f"The model `{model_id}` does not exist or has no live worker", param="model")
        return ModelCard(id=model_id).model_dump()

    @router.post("/v1/chat/completions")
    async def v1_chat_completions(request: Request) -> Response:
        raw = await request.body()
        bound = registry.prompt_char_limit(None)
        if bound is not None and body_surely_too_long(raw, bound):  # too long for every worker
            raise body_too_long_error(raw, bound)
        parsed = await json_body(ChatCompletionRequest, parse_chat_request)(request)
        parsed.check_supported()  # refused here already: no worker sees it
        limit = registry.prompt_char_limit(parsed.model)
        if limit is not None and (chars := text_chars(parsed.messages)) > limit:
            raise prompt_too_long(chars, limit)  # as the worker would, without forwarding megabytes
        check_request_bounds(parsed, registry)  # likewise for stop strings and images
        upstream = await runtime.open_worker(parsed.model, "/v1/chat/completions", raw,
                                             read="first" if parsed.stream else "all")
        if upstream is None:
            raise ModelNotFoundError(f"The model `{parsed.model}` does not exist or has no live worker",
                                     param="model")
        if isinstance(upstream, Exception):
            return _gateway_error(upstream)
        response = upstream.response
        content_type = response.headers.get("content-type", "application/json")
        if not (parsed.stream and response.status_code == 200 and content_type.startswith("text/event-stream")):
            try:
                body = b"".join([piece async for piece in upstream.relay()])
            except httpx.HTTPError as exc:
                return _gateway_error(exc)
            return Response(body, status_code=response.status_code, media_type=content_type)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for piece in upstream.relay(limits.max_stream_bytes):
                    yield piece
            except WorkerAnswerTooLarge as exc:
                logger.warning("worker stream cut: %s", exc)
                yield sse_event(error_body("the worker's stream is over the controller's limit",
                                           error_type="server_error", code="worker_answer_too_large"))
            except httpx.HTTPError as exc:
                logger.info("worker stream failed: %s, %s: %s", upstream.address, type(exc).__name__, exc)
                # an SSE error event: the openai client raises APIError on it
                yield sse_event(error_body(f"the worker stream broke off ({type(exc).__name__})",
                                           error_type="server_error", code="worker_error"))

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.include_router(workers_router)
    app.include_router(router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "workers": len(registry)}

    return app


def _gateway_error(exc: Exception) -> JSONResponse:
    """502 (worker unreachable / failed / answered too much) or 504 (worker timed out) in the OpenAI shape."""
    if isinstance(exc, WorkerAnswerTooLarge):
        return JSONResponse(error_body("the worker's answer is over the controller's limit", error_type="server_error",
                                       code="worker_answer_too_large"), status_code=502)
    timed_out = isinstance(exc, httpx.TimeoutException)
    return JSONResponse(
        error_body(f"the worker for this model {'timed out' if timed_out else 'is unreachable'} "
                   f"({type(exc).__name__})", error_type="server_error",
                   code="worker_timeout" if timed_out else "worker_unreachable"),
        status_code=504 if timed_out else 502)


# --- CLI ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m mgm.serve.controller"),
        description="Run the mgm controller: model workers register here, and clients (the Gradio UI, "
                    "test_message, OpenAI clients at /v1) are dispatched to a worker serving their model.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only). Beyond loopback, workers "
                             "can register only with --worker-api-key; set --api-key for clients too")
    parser.add_argument("--port", type=int, default=21001, help="TCP port (default 21001)")
    parser.add_argument("--dispatch-method", choices=DISPATCH_METHODS, default="shortest_queue",
                        help="lottery: random worker weighted by speed; shortest_queue (default): the worker "
                             "with the smallest queue_length/speed")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"the clients' key (Authorization: Bearer or x-api-key), required on every client "
                             f"route but GET /health; it never allows registering (default: ${API_KEY_ENV}, "
                             f"else no key)")
    parser.add_argument("--worker-api-key", default=os.environ.get(WORKER_API_KEY_ENV),
                        help=f"the worker key: workers must send it to register and beat (their --api-key), and "
                             f"the controller sends it only to the workers that registered with it. Must differ "
                             f"from --api-key (default: ${WORKER_API_KEY_ENV}, else none: registration open on a "
                             f"loopback controller, for loopback workers only, and refused beyond loopback)")
    parser.add_argument("--worker-allow-hosts", default=None,
                        help="comma-separated worker hosts (names, IPs, networks like 10.0.0.0/8) allowed to "
                             "register; the controller contacts no other host (default: any with a worker key, "
                             "loopback only without)")
    parser.add_argument("--heart-beat-expiration", type=float, default=float(CONTROLLER_HEART_BEAT_EXPIRATION),
                        help="drop a worker not heard from (heart beat, or the controller's status poll of "
                             "workers registered without heart beats) for this many seconds (default 30)")
    parser.add_argument("--heart-beat-check-interval", type=float, default=None,
                        help="seconds between expiry sweeps and status polls (default: the expiration)")
    parser.add_argument("--worker-timeout", type=float, default=120.0,
                        help="seconds a proxied request may wait for the worker's next bytes (default 120)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                        help=f"seconds a client has to send its whole request body; slower ones get 408 (default "
                             f"{DEFAULT_BODY_TIMEOUT:g})")
    parser.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS,
                        help=f"refuse registrations beyond this many workers (default {DEFAULT_MAX_WORKERS})")
    parser.add_argument("--max-worker-answer-bytes", type=int, default=DEFAULT_MAX_ANSWER_BYTES,
                        help=f"largest non-stream answer read from a worker; more is a 502 (default "
                             f"{DEFAULT_MAX_ANSWER_BYTES})")
    parser.add_argument("--max-worker-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                        help=f"largest message of a worker's generation stream (default {DEFAULT_MAX_FRAME_BYTES})")
    parser.add_argument("--max-worker-stream-bytes", type=int, default=DEFAULT_MAX_STREAM_BYTES,
                        help=f"a relayed worker stream is cut after this many bytes (default "
                             f"{DEFAULT_MAX_STREAM_BYTES})")
    parser.add_argument("--log-dir", default=None,
                        help="folder for controller.log (default: $MGM_LOGDIR, else ~/.local/state/mgm/logs)")
    return parser


def parse_settings(argv: list[str] | None = None) -> ControllerSettings:
    """Command-line arguments → ControllerSettings (raises UserError on bad values)."""
    args = build_parser().parse_args(argv)
    try:
        allow_hosts = WorkerHostPolicy.parse(args.worker_allow_hosts)
    except ValueError as exc:
        raise UserError(f"--worker-allow-hosts: {exc}") from None
    return ControllerSettings(
        host=args.host, port=args.port, dispatch_method=args.dispatch_method, api_key=args.api_key,
        worker_api_key=args.worker_api_key, worker_allow_hosts=allow_hosts,
        heart_beat_expiration=args.heart_beat_expiration, heart_beat_check_interval=args.heart_beat_check_interval,
        worker_timeout=args.worker_timeout, max_body_bytes=args.max_body_bytes, log_dir=args.log_dir,
        max_workers=args.max_workers, body_timeout=args.body_timeout, max_worker_answer_bytes=args.max_worker_answer_bytes,
        max_worker_frame_bytes=args.max_worker_frame_bytes, max_worker_stream_bytes=args.max_worker_stream_bytes)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logger = build_logger(LOGGER_NAME, "controller.log", settings.log_dir)
    if not is_loopback(settings.host):
        if not settings.worker_api_key:
            logger.warning("listening on %s without --worker-api-key: workers cannot register", settings.host)
        if not settings.api_key:
            logger.warning("listening on %s without --api-key: anyone who can reach this port can use the "
                           "workers", settings.host)
    logger.info("args: %s", {k: ("***" if "key" in k and v else v) for k, v in vars(settings).items()})
    import uvicorn  # imported here: only the running server needs it

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
