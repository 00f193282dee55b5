"""The controller's requests to model workers: status polls and requests with failover.

`WorkerClient.open_worker` sends a request to a worker serving the model; when that worker is down
(connection refused or reset, see `worker_is_down`) it is dropped from the registry at once and the
next worker of the model is tried, while nothing has been passed on to the client yet. `Upstream` is
the open answer, relayed to the client by the controller's routes.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from mgm.serve.protocol import WorkerStatus
from mgm.serve.security import auth_headers
from mgm.serve.upstream_limits import UpstreamLimits, WorkerAnswerTooLarge, read_bounded
from mgm.serve.worker_registry import WorkerRegistry, fetch_worker_status, worker_is_down


class WorkerClient:
    """The controller's HTTP side towards workers, over one shared client (set while the app runs).

    `worker_api_key` is sent only to workers whose registry entry is `keyed`.
    """

    def __init__(self, registry: WorkerRegistry, logger: logging.Logger, *, worker_api_key: str | None,
                 connect_timeout: float, limits: UpstreamLimits | None = None, self_id: str | None = None) -> None:
        self.worker_api_key = worker_api_key
        self.limits = limits or UpstreamLimits()
        self.self_id = self_id
        self.connect_timeout = connect_timeout
        self.registry = registry
        self.logger = logger
        self._client: httpx.AsyncClient | None = None

    def open(self, timeout: float) -> None:
        """Create the shared client (`timeout`: seconds a request may wait for the worker's next bytes)."""
        # trust_env=False: workers are internal addresses; an environment proxy must not intercept them
        self._client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(timeout, connect=self.connect_timeout))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the controller app is not running (its lifespan has not started)")
        return self._client

    def headers_for(self, worker_name: str) -> dict[str, str]:
        """The worker key, only for a worker that registered with it."""
        info = self.registry.workers.get(worker_name)
        return auth_headers(self.worker_api_key) if info is not None and info.keyed else {}

    async def status_of(self, worker_name: str, headers: dict[str, str] | None = None) -> WorkerStatus | Exception:
        return await fetch_worker_status(self.client, worker_name, self.connect_timeout, self.logger,
                                         self.headers_for(worker_name) if headers is None else headers,
                                         limits=self.limits, self_id=self.self_id)

    async def refresh(self, names: Iterable[str], drop: Callable[[Exception], bool] = worker_is_down) -> None:
        """Poll the status of `names`: refresh those that answer, drop those whose failure `drop` accepts."""
        names = list(names)
        results = await asyncio.gather(*(self.status_of(name) for name in names))
        for name, result in zip(names, results):
            if isinstance(result, WorkerStatus):
                self.registry.refresh(name, result)
            elif drop(result) and self.registry.remove(name):
                self.logger.info("remove unreachable worker: %s (%s)", name, type(result).__name__)

    async def poll_unbeating(self) -> None:
        """Status-poll the workers that send no heart beats; drop those that are down."""
        await self.refresh(self.registry.poll_targets())

    async def aggregate_status(self) -> dict[str, Any]:
        """The original controller's `/worker_get_status`: model names, summed speed and queue length."""
        statuses = await asyncio.gather(*(self.status_of(name) for name in list(self.registry.workers)))
        model_names: dict[str, None] = {}
        speed: float = 0
        queue_length = 0
        for status in statuses:
            if isinstance(status, WorkerStatus):
                model_names.update(dict.fromkeys(status.model_names))
                speed += status.speed
                queue_length += status.queue_length
        return {"model_names": list(model_names), "speed": speed, "queue_length": queue_length}

    async def open_worker(self, model: str, path: str, payload: bytes, read: str) -> Upstream | Exception | None:
        """POST `payload` to `path` of a worker serving `model`, failing over to the next worker while one
        is down (it is dropped at once). `read` says how much of a 200 answer is read here, where a
        failure still fails over: "first" (the first piece: a stream has sent the client nothing yet) or
        "all". Returns the open `Upstream`, the last error that is not a worker being down (a timeout),
        or None when no worker serves the model (any more)."""
        tried: list[str] = []
        last: Exception | None = None
        while address := self.registry.get_worker_address(model, exclude=tried):
            tried.append(address)
            request = self.client.build_request("POST", address + path, content=payload, headers={
                "content-type": "application/json", **self.headers_for(address)})
            response = None
            try:
                response = await self.client.send(request, stream=True)
                upstream = Upstream(address, response, response.aiter_bytes())
                if response.status_code != 200 or read == "all":
                    try:
                        upstream.head = await read_bounded(upstream.pieces, self.limits.max_answer_bytes,
                                                           f"the answer of worker {address}")
                    except WorkerAnswerTooLarge as exc:
                        await response.aclose()
                        self.logger.warning("%s", exc)
                        return exc
                else:
                    upstream.head = await anext(upstream.pieces, b"")
                return upstream
            except httpx.HTTPError as exc:
                if response is not None:
                    await response.aclose()
                last = exc
                if not worker_is_down(exc):
                    self.logger.info("worker request failed: %s, %s: %s", address, type(exc).__name__, exc)
                    return exc
                if self.registry.remove(address):
                    self.logger.warning("worker %s is down (%s: %s): dropped; trying another worker", address,
                                        type(exc).__name__, exc)
        return last


@dataclass
class Upstream:
    """An open answer of a worker: `head` (already read) then the rest of `pieces`."""

    address: str
    response: httpx.Response
    pieces: AsyncIterator[bytes]
    head: bytes = b""

    async def relay(self, limit: int | None = None) -> AsyncIterator[bytes]:
        """`head`, then the rest (the response is closed at the end); WorkerAnswerTooLarge once more
        than `limit` bytes came."""
        total = 0
        try:
            if self.head:
                total += len(self.head)
                yield self.head
            async for piece in self.pieces:
                total += len(piece)
                if limit is not None and total > limit:
                    raise WorkerAnswerTooLarge(f"the stream of worker {self.address} is over the controller's "
                                               f"limit of {limit} bytes")
                yield piece
        finally:
            await self.response.aclose()
