"""A model worker's link to its controller: registration and heart beats, on one background thread.

The controller verifies a registration by calling the worker's own `/worker_get_status`, so the worker
registers only once its server accepts connections: the thread starts with the server and retries
quickly (0.2 s, doubling up to `HEART_BEAT_RETRY`) until the controller accepts. Then it beats every
`interval` seconds (and right after a request starts or ends, as the original), re-registering when the
controller has forgotten it. Every call carries the worker key (`api_key`), which the controller
requires for registering when it has a `--worker-api-key`.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import httpx

from mgm.serve.security import auth_headers

HEART_BEAT_RETRY = 5.0  # most seconds between attempts while the controller cannot be reached (original: 5)
FIRST_RETRY = 0.2  # seconds before the second registration attempt (the server may still be starting)


class ControllerLink:
    """Registers `worker_address` with `controller_address` and keeps it alive with heart beats.

    status: the worker's status (sent with the registration, as the original does; the controller
    fetches it itself anyway). queue_length: the current queue length, sent with each beat.
    """

    def __init__(self, controller_address: str, worker_address: str, *, status: Callable[[], dict],
                 queue_length: Callable[[], int], interval: float, api_key: str | None,
                 logger: logging.Logger) -> None:
        self.controller_address = controller_address.rstrip("/")
        self.worker_address = worker_address.rstrip("/")
        self.status = status
        self.queue_length = queue_length
        self.interval = interval
        self.api_key = api_key
        self.logger = logger
        self.registered = threading.Event()  # set while the controller knows this worker
        self.beat_now = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _client(self) -> httpx.Client:
        return httpx.Client(trust_env=False, timeout=httpx.Timeout(30.0, connect=5.0),
                            headers=auth_headers(self.api_key))

    def register(self, client: httpx.Client | None = None) -> bool:
        """POST /register_worker; False (logged) on failure."""
        body = {"worker_name": self.worker_address, "check_heart_beat": True, "worker_status": self.status()}
        try:
            with contextlib.nullcontext(client) if client is not None else self._client() as http:
                response = http.post(self.controller_address + "/register_worker", json=body)
        except httpx.HTTPError as exc:
            self.logger.error("cannot register with the controller %s (%s: %s); retrying", self.controller_address,
                              type(exc).__name__, exc)
            self.registered.clear()
            return False
        if response.status_code != 200:
            self.logger.error("the controller %s refused the registration: HTTP %s %s", self.controller_address,
                              response.status_code, response.text[:300])
            self.registered.clear()
            return False
        self.logger.info("registered with the controller %s as %s", self.controller_address, self.worker_address)
        self.registered.set()
        return True

    def send_heart_beat(self, client: httpx.Client | None = None) -> bool:
        """One beat; re-registers when the controller forgot us. False when that failed."""
        if not self.registered.is_set():
            return self.register(client)
        body = {"worker_name": self.worker_address, "queue_length": self.queue_length()}
        try:
            with contextlib.nullcontext(client) if client is not None else self._client() as http:
                response = http.post(self.controller_address + "/receive_heart_beat", json=body)
            exist = bool(response.json().get("exist")) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            self.logger.error("heart beat to %s failed: %s: %s", self.controller_address, type(exc).__name__, exc)
            return False
        if exist is None:
            self.logger.error("heart beat refused by %s: HTTP %s", self.controller_address, response.status_code)
            return False
        if not exist:
            self.logger.info("the controller does not know this worker any more; registering again")
            self.registered.clear()
            return self.register(client)
        return True

    def _loop(self) -> None:
        retry = FIRST_RETRY
        with self._client() as client:  # one connection pool for the thread's life
            while not self._stop.is_set():
                if not self.send_heart_beat(client):
                    self._stop.wait(retry)
                    retry = min(retry * 2, HEART_BEAT_RETRY)
                    continue
                retry = FIRST_RETRY
                woken = self.beat_now.wait(self.interval)
                self.beat_now.clear()
                if woken:
                    self._stop.wait(0.2)  # coalesce the beats of a burst of requests

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mgm-heart-beat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self.beat_now.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
