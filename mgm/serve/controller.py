"""The controller: a registry of model workers that dispatches requests to them (MGM_SPEC §7.2).

    python -m mgm.serve.controller --host 127.0.0.1 --port 21001 --dispatch-method shortest_queue

Workers register (`/register_worker`) and send heart beats (`/receive_heart_beat`); the UI asks for a
worker address per model (`/get_worker_address`) or streams through the controller
(`/worker_generate_stream`). All the original POST endpoints and JSON bodies are kept. Additions:
`GET /health`, an OpenAI-compatible `POST /v1/chat/completions` + `GET /v1/models` proxied to a worker
serving the requested model, an optional API key, a request-body limit, and these fixes of the
original: no request to an empty address after a "no worker" answer (§10.26), every worker request
has a timeout, worker URLs are normalised (no trailing "/").

`create_app(settings)` builds the FastAPI app (nothing is built at import); `main(argv)` runs it with
uvicorn. The registry is only touched from the event loop (all endpoints are `async`), so it needs no
lock.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from mgm.errors import UserError, exit_on_user_error
from mgm.serve.logging_utils import build_logger
from mgm.serve.openai_protocol import ChatCompletionRequest, ModelCard, ModelList, sse_event
from mgm.serve.protocol import (
    CHUNK_DELIMITER,
    CONTROLLER_HEART_BEAT_EXPIRATION,
    ERROR_CONTROLLER_REQUEST,
    ERROR_NO_WORKER,
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
    DEFAULT_MAX_BODY_BYTES,
    BodySizeLimitMiddleware,
    api_key_dependency,
    auth_headers,
    format_validation_errors,
    install_error_handlers,
)

LOGGER_NAME = "mgm.serve.controller"  # not __name__: that is "__main__" under `python -m`
DISPATCH_METHODS = ("lottery", "shortest_queue")
API_KEY_ENV = "MGM_API_KEY"
WORKER_API_KEY_ENV = "MGM_WORKER_API_KEY"


@dataclass(frozen=True)
class ControllerSettings:
    """Everything the controller app needs; the CLI flags map 1:1 onto these fields.

    api_key: clients must send it (Bearer or x-api-key) on every route but GET /health; None = open.
    worker_api_key: sent as Bearer to workers (status polls and proxied requests); None = none sent.
    heart_beat_expiration: seconds without a beat after which a heart-beat-checked worker is dropped.
    heart_beat_check_interval: seconds between expiry sweeps; None = the expiration (the original's cadence).
    connect_timeout: seconds to connect to a worker, and the whole timeout of a status poll.
    worker_timeout: seconds a proxied generation may wait for the worker's next bytes.
    max_body_bytes: request bodies above this get 413.
    log_dir: folder of controller.log (None = $MGM_LOGDIR or "."); used by main() only.
    """

    host: str = "127.0.0.1"
    port: int = 21001
    dispatch_method: str = "shortest_queue"
    api_key: str | None = None
    worker_api_key: str | None = None
    heart_beat_expiration: float = float(CONTROLLER_HEART_BEAT_EXPIRATION)
    heart_beat_check_interval: float | None = None
    connect_timeout: float = 5.0
    worker_timeout: float = 120.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dispatch_method not in DISPATCH_METHODS:
            raise UserError(f"--dispatch-method {self.dispatch_method!r} is not one of {', '.join(DISPATCH_METHODS)}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port} is not a TCP port (0-65535)")
        for name in ("heart_beat_expiration", "connect_timeout", "worker_timeout"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.heart_beat_check_interval is not None and self.heart_beat_check_interval <= 0:
            raise UserError(f"--heart-beat-check-interval must be > 0, got {self.heart_beat_check_interval}")
        if self.max_body_bytes <= 0:
            raise UserError(f"--max-body-bytes must be > 0, got {self.max_body_bytes}")

    @property
    def check_interval(self) -> float:
        return self.heart_beat_check_interval or self.heart_beat_expiration


# --- registry ----------------------------------------------------------------------------------------
@dataclass
class WorkerInfo:
    """What the controller knows about one worker (times are `clock()` values, seconds)."""

    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


def normalize_worker_name(worker_name: str) -> str:
    """A worker's registry key: its base URL without trailing "/" (the original concatenated paths)."""
    return worker_name.strip().rstrip("/")


@dataclass
class WorkerRegistry:
    """Worker address → WorkerInfo, with the two dispatch rules of the original.

    lottery: a random worker serving the model, chosen with probability ∝ speed.
    shortest_queue: the worker with the least queue_length / speed (first registered wins ties); its
    queue_length is then incremented so back-to-back requests spread before the next heart beat.
    """

    dispatch_method: str = "shortest_queue"
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    workers: dict[str, WorkerInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dispatch_method not in DISPATCH_METHODS:
            raise ValueError(f"dispatch_method {self.dispatch_method!r} is not one of {DISPATCH_METHODS}")

    def __len__(self) -> int:
        return len(self.workers)

    def register(self, worker_name: str, check_heart_beat: bool, status: WorkerStatus) -> None:
        """Add or replace a worker (its heart-beat clock restarts now)."""
        self.workers[normalize_worker_name(worker_name)] = WorkerInfo(
            model_names=list(status.model_names), speed=float(status.speed), queue_length=int(status.queue_length),
            check_heart_beat=check_heart_beat, last_heart_beat=self.clock())

    def remove(self, worker_name: str) -> bool:
        return self.workers.pop(normalize_worker_name(worker_name), None) is not None

    def heart_beat(self, worker_name: str, queue_length: int) -> bool:
        """Record a beat; False if the worker is unknown (it should register again)."""
        info = self.workers.get(normalize_worker_name(worker_name))
        if info is None:
            return False
        info.queue_length = queue_length
        info.last_heart_beat = self.clock()
        return True

    def list_models(self) -> list[str]:
        """Unique model names, in order of first registration."""
        return list(dict.fromkeys(m for info in self.workers.values() for m in info.model_names))

    def get_worker_address(self, model: str) -> str:
        """The address to send a request for `model` to, or "" if no worker serves it."""
        candidates = [(name, info) for name, info in self.workers.items()
                      if model in info.model_names and info.speed > 0]
        if not candidates:
            return ""
        if self.dispatch_method == "lottery":
            if sum(info.speed for _, info in candidates) < 1e-4:
                return ""
            return self.rng.choices([n for n, _ in candidates], weights=[i.speed for _, i in candidates])[0]
        name, info = min(candidates, key=lambda item: item[1].queue_length / item[1].speed)
        info.queue_length += 1
        return name

    def remove_expired(self, expiration: float) -> list[str]:
        """Drop heart-beat-checked workers whose last beat is older than `expiration` seconds."""
        deadline = self.clock() - expiration
        stale = [n for n, i in self.workers.items() if i.check_heart_beat and i.last_heart_beat < deadline]
        for name in stale:
            del self.workers[name]
        return stale


# --- app ---------------------------------------------------------------------------------------------
class _Runtime:
    """Per-app mutable state (the shared HTTP client exists only while the app runs)."""

    def __init__(self, settings: ControllerSettings, registry: WorkerRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the controller app is not running (its lifespan has not started)")
        return self._client


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def fetch_worker_status(client: httpx.AsyncClient, worker_name: str, timeout: float,
                              logger: logging.Logger) -> WorkerStatus | None:
    """POST `<worker>/worker_get_status`; None (logged) on any failure."""
    try:
        response = await client.post(worker_name + "/worker_get_status", timeout=timeout)
        if response.status_code != 200:
            logger.error("get status fails: %s, HTTP %s", worker_name, response.status_code)
            return None
        return WorkerStatus.model_validate(response.json())
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, ValidationError) as exc:
        logger.error("get status fails: %s, %s: %s", worker_name, type(exc).__name__, exc)
        return None


def create_app(settings: ControllerSettings | None = None, *, registry: WorkerRegistry | None = None) -> FastAPI:
    """Build the controller app. `registry` may be injected (tests); by default a fresh one."""
    settings = settings or ControllerSettings()
    if registry is None:
        registry = WorkerRegistry(settings.dispatch_method)
    runtime = _Runtime(settings, registry)
    logger = logging.getLogger(LOGGER_NAME)

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(settings.check_interval)
            try:
                for name in registry.remove_expired(settings.heart_beat_expiration):
                    logger.info("remove stale worker (no heart beat for %.1f s): %s",
                                settings.heart_beat_expiration, name)
            except Exception:  # keep sweeping whatever happens
                logger.exception("heart-beat expiry sweep failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # trust_env=False: workers are internal addresses; an environment proxy must not intercept them
        runtime._client = httpx.AsyncClient(
            trust_env=False, headers=auth_headers(settings.worker_api_key),
            timeout=httpx.Timeout(settings.worker_timeout, connect=settings.connect_timeout))
        sweeper = asyncio.create_task(expire_loop())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await runtime._client.aclose()
            runtime._client = None

    app = FastAPI(title="mgm controller", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.registry = registry
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    router = APIRouter(dependencies=[Depends(api_key_dependency(settings.api_key))])

    async def status_of(worker_name: str) -> WorkerStatus | None:
        return await fetch_worker_status(runtime.client, worker_name, settings.connect_timeout, logger)

    # --- original protocol ---
    @router.post("/register_worker")
    async def register_worker(body: RegisterWorkerRequest) -> None:
        name = normalize_worker_name(body.worker_name)
        if not name.startswith(("http://", "https://")):
            raise RequestError(f"worker_name {body.worker_name!r} must be the worker's http(s) base URL",
                               param="worker_name")
        logger.info("register %s worker: %s", "an existing" if name in registry.workers else "a new", name)
        status = body.worker_status or await status_of(name)
        if status is None:
            raise RequestError(f"cannot get the status of worker {name} (POST {name}/worker_get_status failed)",
                               param="worker_name")
        registry.register(name, body.check_heart_beat, status)
        logger.info("register done: %s, %s", name, status.model_dump())
        return None

    @router.post("/refresh_all_workers")
    async def refresh_all_workers() -> None:
        snapshot = dict(registry.workers)
        statuses = await asyncio.gather(*(status_of(name) for name in snapshot))
        for (name, info), status in zip(snapshot.items(), statuses):
            if status is None:
                registry.remove(name)
                logger.info("remove stale worker: %s", name)
            else:
                registry.register(name, info.check_heart_beat, status)
        return None

    @router.post("/list_models")
    async def list_models() -> dict[str, list[str]]:
        return {"models": registry.list_models()}

    @router.post("/get_worker_address")
    async def get_worker_address(body: GetWorkerAddressRequest) -> dict[str, str]:
        address = registry.get_worker_address(body.model)
        logger.info("get_worker_address: model=%s, address=%s", body.model, address or "(none)")
        return {"address": address}

    @router.post("/receive_heart_beat")
    async def receive_heart_beat(body: HeartBeatRequest) -> dict[str, bool]:
        exist = registry.heart_beat(body.worker_name, body.queue_length)
        if not exist:
            logger.info("receive unknown heart beat: %s", body.worker_name)
        return {"exist": exist}

    async def proxy_generate(address: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        url = address + "/worker_generate_stream"
        try:
            async with runtime.client.stream("POST", url, json=payload) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:500]
                    logger.error("worker %s answered HTTP %s: %r", address, response.status_code, detail)
                    yield error_chunk(ERROR_CONTROLLER_REQUEST)
                    return
                # re-frame: pass each JSON message through byte-for-byte, one per yield
                async for message in asplit_chunks(response.aiter_bytes()):
                    yield message + CHUNK_DELIMITER
        except httpx.HTTPError as exc:
            logger.info("worker request failed: %s, %s: %s", address, type(exc).__name__, exc)
            yield error_chunk(ERROR_CONTROLLER_REQUEST)

    @router.post("/worker_generate_stream")
    async def worker_generate_stream(params: GenerateParams) -> StreamingResponse:
        address = registry.get_worker_address(params.model or "")
        if not address:
            # the original went on to POST to "" after this chunk (§10.26); one chunk and done
            logger.info("no worker: %s", params.model)
            return StreamingResponse(iter([error_chunk(ERROR_NO_WORKER)]))
        return StreamingResponse(proxy_generate(address, params.model_dump(mode="json")))

    @router.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        statuses = await asyncio.gather(*(status_of(name) for name in list(registry.workers)))
        model_names: dict[str, None] = {}
        speed: float = 0
        queue_length = 0
        for status in statuses:
            if status is not None:
                model_names.update(dict.fromkeys(status.model_names))
                speed += status.speed
                queue_length += status.queue_length
        return {"model_names": list(model_names), "speed": speed, "queue_length": queue_length}

    # --- OpenAI-compatible routes ---
    @router.get("/v1/models")
    async def v1_models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=m) for m in registry.list_models()]).model_dump()

    @router.post("/v1/chat/completions")
    async def v1_chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            parsed = ChatCompletionRequest.model_validate(json.loads(raw))
        except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
            message = format_validation_errors(exc.errors()) if isinstance(exc, ValidationError) else str(exc)
            raise RequestError(f"invalid request body: {message}") from None
        address = registry.get_worker_address(parsed.model)
        if not address:
            raise ModelNotFoundError(f"The model `{parsed.model}` does not exist or has no live worker",
                                     param="model")
        upstream = runtime.client.build_request(
            "POST", address + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        try:
            response = await runtime.client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return _gateway_error(exc, address, logger)
        content_type = response.headers.get("content-type", "application/json")
        if not (parsed.stream and response.status_code == 200 and content_type.startswith("text/event-stream")):
            try:
                body = await response.aread()
            except httpx.HTTPError as exc:
                return _gateway_error(exc, address, logger)
            finally:
                await response.aclose()
            return Response(body, status_code=response.status_code, media_type=content_type)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for piece in response.aiter_bytes():
                    yield piece
            except httpx.HTTPError as exc:
                logger.info("worker stream failed: %s, %s: %s", address, type(exc).__name__, exc)
                # an SSE error event: the openai client raises APIError on it
                yield sse_event(error_body(f"the worker stream broke off ({type(exc).__name__})",
                                           error_type="server_error", code="worker_error"))
            finally:
                await response.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.include_router(router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "workers": len(registry)}

    return app


def _gateway_error(exc: httpx.HTTPError, address: str, logger: logging.Logger) -> JSONResponse:
    """502 (worker unreachable / failed) or 504 (worker timed out) in the OpenAI error shape."""
    logger.info("worker request failed: %s, %s: %s", address, type(exc).__name__, exc)
    timed_out = isinstance(exc, httpx.TimeoutException)
    return JSONResponse(
        error_body(f"the worker for this model {'timed out' if timed_out else 'is unreachable'} "
                   f"({type(exc).__name__})", error_type="server_error",
                   code="worker_timeout" if timed_out else "worker_unreachable"),
        status_code=504 if timed_out else 502)


# --- CLI ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgm.serve.controller",
        description="Run the mgm controller: model workers register here, and clients (the Gradio UI, "
                    "test_message, OpenAI clients at /v1) are dispatched to a worker serving their model.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; use 0.0.0.0 to expose, "
                             "ideally with --api-key)")
    parser.add_argument("--port", type=int, default=21001, help="TCP port (default 21001)")
    parser.add_argument("--dispatch-method", choices=DISPATCH_METHODS, default="shortest_queue",
                        help="lottery: random worker weighted by speed; shortest_queue (default): the worker "
                             "with the smallest queue_length/speed")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                        help=f"require this key from clients (Authorization: Bearer or x-api-key) on every route "
                             f"but GET /health (default: ${API_KEY_ENV}, else no key)")
    parser.add_argument("--worker-api-key", default=os.environ.get(WORKER_API_KEY_ENV) or None,
                        help=f"key sent to workers that require one (default: ${WORKER_API_KEY_ENV}, else none)")
    parser.add_argument("--heart-beat-expiration", type=float, default=float(CONTROLLER_HEART_BEAT_EXPIRATION),
                        help="drop a heart-beat-checked worker after this many seconds without a beat (default 30)")
    parser.add_argument("--heart-beat-check-interval", type=float, default=None,
                        help="seconds between expiry sweeps (default: the expiration)")
    parser.add_argument("--worker-timeout", type=float, default=120.0,
                        help="seconds a proxied request may wait for the worker's next bytes (default 120)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--log-dir", default=None,
                        help="folder for controller.log (default: $MGM_LOGDIR, else the current folder)")
    return parser


def parse_settings(argv: list[str] | None = None) -> ControllerSettings:
    """Command-line arguments → ControllerSettings (raises UserError on bad values)."""
    args = build_parser().parse_args(argv)
    return ControllerSettings(
        host=args.host, port=args.port, dispatch_method=args.dispatch_method, api_key=args.api_key,
        worker_api_key=args.worker_api_key, heart_beat_expiration=args.heart_beat_expiration,
        heart_beat_check_interval=args.heart_beat_check_interval, worker_timeout=args.worker_timeout,
        max_body_bytes=args.max_body_bytes, log_dir=args.log_dir)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logger = build_logger(LOGGER_NAME, "controller.log", settings.log_dir)
    if not _is_loopback(settings.host) and not settings.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach this port can register "
                       "workers and use them", settings.host)
    logger.info("args: %s", {k: ("***" if "key" in k and v else v) for k, v in vars(settings).items()})
    import uvicorn  # imported here: only the running server needs it

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
