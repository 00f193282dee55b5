"""The controller's registry of model workers: who serves what, dispatch, expiry, and which worker
URLs the controller may contact at all.

The original controller (mgm/serve/controller.py, `Controller`) trusted the status a registration sent,
kept `check_heart_beat: false` entries for ever and POSTed to any URL a client named. Here:

- an entry exists only after the controller fetched the worker's status itself (`fetch_worker_status`);
- every entry expires: heart-beat-checked workers when their beats stop, the others when the
  controller's own status poll fails (`WorkerRegistry.remove_expired` / `poll_targets`);
- `WorkerHostPolicy` says which hosts a worker URL may name before any request is sent to it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from mgm.serve.protocol import RequestError, WorkerStatus
from mgm.serve.upstream_limits import UpstreamLimits, WorkerAnswerTooLarge, check_status, read_bounded

DISPATCH_METHODS = ("lottery", "shortest_queue")


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_worker_name(worker_name: str) -> str:
    """A worker's registry key: one per scheme, host, port and path.

    Scheme and host are lower-cased, a default port (80 for http, 443 for https) is dropped, and so
    are a trailing "/", the query and the fragment (the original concatenated paths onto the name).
    Text that is not a URL is only stripped (`WorkerHostPolicy.check` refuses it).
    """
    name = worker_name.strip()
    try:
        parts = urlsplit(name)
        port = parts.port
    except ValueError:
        return name.rstrip("/")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return name.rstrip("/")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class WorkerHostPolicy:
    """Which hosts a worker URL may name (checked before the controller sends it anything).

    allow_hosts: host names (matched case-insensitively, never resolved) and IP addresses or networks
    ("10.0.0.0/8"); empty = any host, unless `loopback_only`.
    loopback_only: only loopback hosts (the default of a controller whose registration needs no key).
    """

    allow_hosts: tuple[str, ...] = ()
    loopback_only: bool = False

    @staticmethod
    def parse(spec: str | None) -> tuple[str, ...]:
        """"a,b,10.0.0.0/8" → ("a", "b", "10.0.0.0/8"); bad networks are a ValueError naming them."""
        hosts = tuple(h.strip().lower() for h in (spec or "").split(",") if h.strip())
        for host in hosts:
            if "/" in host:
                ipaddress.ip_network(host, strict=False)  # raises ValueError with the bad text
        return hosts

    def _allowed(self, host: str) -> bool:
        if self.allow_hosts:
            for entry in self.allow_hosts:
                if "/" in entry:
                    try:
                        if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                            return True
                    except ValueError:
                        continue
                elif host == entry.strip("[]"):
                    return True
            return False
        return is_loopback(host) or not self.loopback_only

    def check(self, worker_name: str) -> str:
        """The normalised URL, or RequestError (400) when it is not an http(s) URL of an allowed host."""
        try:
            raw = urlsplit(worker_name.strip())
        except ValueError:
            raise RequestError(f"worker_name {worker_name[:200]!r} is not a URL", param="worker_name") from None
        if raw.query or raw.fragment or "@" in raw.netloc:
            raise RequestError(f"worker_name {worker_name[:200]!r} must be the worker's base URL, without user "
                               "info, query or fragment", param="worker_name")
        name = normalize_worker_name(worker_name)
        parts = urlsplit(name)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(f"worker_name {worker_name!r} must be the worker's http(s) base URL, e.g. "
                               "http://127.0.0.1:21002", param="worker_name")
        try:
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            raise RequestError(f"worker_name {worker_name!r} has an invalid port", param="worker_name") from None
        host = parts.hostname.lower()
        if not self._allowed(host):
            rule = (f"--worker-allow-hosts ({', '.join(self.allow_hosts)})" if self.allow_hosts
                    else "loopback hosts only, as registration needs no --worker-api-key")
            raise RequestError(f"worker host {host!r} is not allowed by this controller ({rule})", param="worker_name")
        return name


SELF_ID_HEADER = "x-mgm-controller-id"  # every controller answer carries its instance id (own-URL check)


async def fetch_worker_status(client: httpx.AsyncClient, worker_name: str, timeout: float,
                              logger: logging.Logger, headers: dict[str, str] | None = None, *,
                              limits: UpstreamLimits | None = None, self_id: str | None = None,
                              ) -> WorkerStatus | Exception:
    """POST `<worker>/worker_get_status`: the status, or the exception that says why not (logged).

    The whole exchange must end within `timeout` seconds and the answer within `limits.max_status_bytes`;
    an answer carrying `self_id` in SELF_ID_HEADER is this controller itself.
    """
    limits = limits or UpstreamLimits()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", worker_name + "/worker_get_status", timeout=timeout,
                                     headers=headers) as response:
                if self_id is not None and response.headers.get(SELF_ID_HEADER) == self_id:
                    raise RuntimeError("that address is this controller itself")
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
                raw = await read_bounded(response.aiter_bytes(), limits.max_status_bytes, "its status")
        status = WorkerStatus.model_validate_json(raw)
        if not status.model_names:
            raise RuntimeError("it serves no model")
        check_status(status, limits)
        return status
    except TimeoutError:
        exc = TimeoutError(f"no complete status within {timeout:g} s")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, ValidationError, RuntimeError,
            WorkerAnswerTooLarge) as error:
        exc = error
    message = str(exc).splitlines()[0][:300] if str(exc) else ""
    logger.error("get status fails: %s, %s: %s", worker_name, type(exc).__name__, message)
    return exc


def worker_is_down(exc: BaseException) -> bool:
    """A transport failure that means the worker process is gone (not merely slow)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                            httpx.WriteError))


def _prompt_bound(status: WorkerStatus) -> int | None:
    value = (status.model_extra or {}).get("max_prompt_chars")
    return value if isinstance(value, int) and value > 0 else None


REQUEST_BOUNDS = ("max_stop_strings", "max_stop_chars", "max_images")  # mgm workers report them in their status


def _request_bounds(status: WorkerStatus) -> dict[str, int]:
    extra = status.model_extra or {}
    return {key: extra[key] for key in REQUEST_BOUNDS if isinstance(extra.get(key), int) and extra[key] > 0}


@dataclass
class WorkerInfo:
    """What the controller knows about one worker (times are `clock()` values, seconds).

    keyed: the registration carried the worker key, so the controller sends it that key.
    last_heart_beat: the last beat (heart-beat-checked workers) or successful status poll (the others).
    max_prompt_chars: the worker's bound on prompt characters (its status says), so the controller can
        refuse a huge prompt without forwarding it; None = unknown.
    """

    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    keyed: bool = False
    max_prompt_chars: int | None = None
    bounds: dict[str, int] = field(default_factory=dict)  # the worker's per-request bounds (REQUEST_BOUNDS)


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

    def register(self, worker_name: str, check_heart_beat: bool, status: WorkerStatus, keyed: bool = False) -> None:
        """Add or replace a worker (its heart-beat clock restarts now)."""
        self.workers[normalize_worker_name(worker_name)] = WorkerInfo(
            model_names=list(status.model_names), speed=float(status.speed), queue_length=int(status.queue_length),
            check_heart_beat=check_heart_beat, last_heart_beat=self.clock(), keyed=keyed,
            max_prompt_chars=_prompt_bound(status), bounds=_request_bounds(status))

    def refresh(self, worker_name: str, status: WorkerStatus) -> None:
        """A successful status poll: new status, clock restarted, registration flags kept."""
        info = self.workers.get(normalize_worker_name(worker_name))
        if info is not None:
            info.model_names, info.speed = list(status.model_names), float(status.speed)
            info.queue_length, info.last_heart_beat = int(status.queue_length), self.clock()
            info.max_prompt_chars = _prompt_bound(status)
            info.bounds = _request_bounds(status)

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

    def get_worker_address(self, model: str, exclude: Iterable[str] = ()) -> str:
        """The address to send a request for `model` to (none of `exclude`), or "" if no worker serves it."""
        skip = set(exclude)
        candidates = [(name, info) for name, info in self.workers.items()
                      if model in info.model_names and info.speed > 0 and name not in skip]
        if not candidates:
            return ""
        if self.dispatch_method == "lottery":
            if sum(info.speed for _, info in candidates) < 1e-4:
                return ""
            return self.rng.choices([n for n, _ in candidates], weights=[i.speed for _, i in candidates])[0]
        name, info = min(candidates, key=lambda item: item[1].queue_length / item[1].speed)
        info.queue_length += 1
        return name

    def prompt_char_limit(self, model: str | None) -> int | None:
        """The largest prompt (characters) some worker of `model` (None: of any model) might take; None
        when one of them does not say."""
        bounds = [info.max_prompt_chars for info in self.workers.values() if model is None or model in info.model_names]
        return max(bounds) if bounds and None not in bounds else None  # type: ignore[type-var]

    def request_bound(self, model: str, key: str) -> int | None:
        """The largest `key` bound (REQUEST_BOUNDS) among the workers of `model`; None when one does not say."""
        bounds = [info.bounds.get(key) for info in self.workers.values() if model in info.model_names]
        return max(bounds) if bounds and None not in bounds else None  # type: ignore[type-var]

    def poll_targets(self) -> list[str]:
        """Workers that send no heart beats: the controller polls their status instead."""
        return [name for name, info in self.workers.items() if not info.check_heart_beat]

    def remove_expired(self, expiration: float) -> list[str]:
        """Drop every worker not heard from (beat or successful poll) for `expiration` seconds."""
        deadline = self.clock() - expiration
        stale = [n for n, i in self.workers.items() if i.last_heart_beat < deadline]
        for name in stale:
            del self.workers[name]
        return stale
