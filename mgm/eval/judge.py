"""OpenAI-compatible chat-completions judge client used by the GPT-assisted scorers (MathVista extraction).

The original called the pre-1.0 `openai.ChatCompletion.create` in an (effectively) infinite retry loop.
This client uses the current SDK (`openai.OpenAI(base_url=..., api_key=...)`), so it works with OpenAI
and with any OpenAI-compatible server (vLLM, SGLang, the mgm model worker's /v1 routes, ...):

* settings: `base_url` / `api_key` / `model` from arguments, else the environment variables
  `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `MGM_JUDGE_MODEL`, else the OpenAI URL and `gpt-4-0613`
  (the original's default engine); a non-OpenAI URL may be used without a key;
* requests: one user message, `temperature=0`, `max_tokens=256`, `n=1` (the original's settings);
  the answer is the stripped message content;
* retries: connection errors, timeouts, HTTP 408/409/429/5xx and empty answers are retried at most
  `max_retries` times with exponential backoff (`backoff_s * 2**attempt`, capped at `max_backoff_s`);
  "Please reduce the length of the messages" keeps the last 90 % of the prompt and retries, as the
  original did; other HTTP errors (401, 404, 400, ...) fail at once;
* errors: an unreachable endpoint raises `JudgeUnreachableError` whose message names the URL; every
  failure is a `JudgeError` (a `mgm.errors.UserError`, so CLIs print one line and exit non-zero);
* cache: with `cache_path`, judged prompts are stored in a JSON file keyed by the SHA-256 of the
  request (model, prompt, temperature, max_tokens) and re-used, so an interrupted run resumes for free.

Example:

    client = JudgeClient(resolve_judge_config(api_base="http://127.0.0.1:8000/v1", model="qwen"))
    text = client.complete("Extract the answer ...")
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mgm.errors import UserError
from mgm.eval.scorer_io import atomic_write_text

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4-0613"
_RETRY_STATUS = frozenset({408, 409, 429})
_REDUCE_LENGTH = "Please reduce the length of the messages"


class JudgeError(UserError):
    """The judge endpoint failed (bad key, unknown model, repeated server errors, ...)."""


class JudgeUnreachableError(JudgeError):
    """The judge endpoint could not be reached at all (connection refused, DNS, timeout)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Resolved judge settings (see `resolve_judge_config`)."""

    base_url: str
    api_key: str
    model: str
    temperature: float = 0.0
    max_tokens: int = 256
    max_retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    cache_path: str | None = None


def resolve_judge_config(api_base: str | None = None, api_key: str | None = None, model: str | None = None,
                         **overrides: Any) -> JudgeConfig:
    """Fill unset settings from OPENAI_BASE_URL / OPENAI_API_KEY / MGM_JUDGE_MODEL, then the defaults.

    Raises:
        JudgeError: no API key for the official OpenAI endpoint.
    """
    base_url = (api_base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url == DEFAULT_BASE_URL:
            raise JudgeError("no API key for the judge at https://api.openai.com/v1: pass --api_key or set "
                             "OPENAI_API_KEY (or point --api_base / OPENAI_BASE_URL at an OpenAI-compatible server)")
        key = "EMPTY"  # local OpenAI-compatible servers accept any key
    return JudgeConfig(base_url=base_url, api_key=key,
                       model=model or os.environ.get("MGM_JUDGE_MODEL") or DEFAULT_MODEL, **overrides)


class JudgeCache:
    """JSON file `{"version": 1, "items": {sha256: {"model": m, "response": text}}}`; writes are atomic."""

    def __init__(self, path: str):
        self.path = path
        self._items: dict[str, dict] = {}
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                self._items = dict(data.get("items", {}))
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                raise JudgeError(f"judge cache {path} is not a valid cache file; delete it or pass another "
                                 "--judge-cache path") from None

    def get(self, key: str) -> str | None:
        item = self._items.get(key)
        return None if item is None else item.get("response")

    def put(self, key: str, model: str, response: str) -> None:
        self._items[key] = {"model": model, "response": response}
        atomic_write_text(self.path, json.dumps({"version": 1, "items": self._items}, indent=1, ensure_ascii=False))

    def __len__(self) -> int:
        return len(self._items)


class JudgeClient:
    """Chat-completions client with bounded retries, clear errors and an optional on-disk cache."""

    def __init__(self, config: JudgeConfig, client: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep
        self.cache = JudgeCache(config.cache_path) if config.cache_path else None
        self.requests_sent = 0
        if client is None:
            import openai  # imported lazily: only GPT-assisted scoring needs it

            client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=0,
                                   timeout=config.timeout_s)
        self._client = client

    def cache_key(self, prompt: str) -> str:
        """SHA-256 of the request fields that determine the answer."""
        payload = json.dumps({"model": self.config.model, "prompt": prompt, "temperature": self.config.temperature,
                              "max_tokens": self.config.max_tokens}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def complete(self, prompt: str) -> str:
        """Return the judge's stripped answer to one user `prompt` ("" if it keeps answering empty)."""
        key = self.cache_key(prompt)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        answer = self._request_with_retries(prompt)
        if answer and self.cache is not None:
            self.cache.put(key, self.config.model, answer)
        return answer

    def _backoff(self, attempt: int) -> None:
        delay = min(self.config.backoff_s * (2 ** attempt), self.config.max_backoff_s)
        if delay > 0:
            self._sleep(delay)

    def _request_with_retries(self, prompt: str) -> str:
        import openai

        url = self.config.base_url
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._backoff(attempt - 1)
            try:
                self.requests_sent += 1
                response = self._client.chat.completions.create(
                    model=self.config.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=self.config.temperature,
                    max_tokens=self.config.max_tokens,
                    n=1,
                )
            except openai.APIConnectionError as exc:  # includes timeouts
                last_error = f"cannot reach the judge endpoint {url} ({type(exc).__name__}: {exc})"
                if attempt == self.config.max_retries:
                    raise JudgeUnreachableError(
                        f"{last_error} after {attempt + 1} attempts; check --api_base / OPENAI_BASE_URL "
                        "and that the server is running") from None
                continue
            except openai.APIStatusError as exc:
                message = _status_message(exc)
                if _REDUCE_LENGTH in message:
                    prompt = prompt[len(prompt) - int(len(prompt) * 0.9):]  # keep the tail, as the original
                    last_error = f"judge {url}: prompt too long; truncated"
                    continue
                if exc.status_code in _RETRY_STATUS or exc.status_code >= 500:
                    last_error = f"judge {url} answered HTTP {exc.status_code}: {message}"
                    continue
                raise JudgeError(f"judge {url} (model {self.config.model!r}) answered HTTP {exc.status_code}: "
                                 f"{message}") from None
            text = _first_content(response)
            if text:
                return text
            last_error = f"judge {url} returned an empty answer"
        if last_error.endswith("empty answer"):
            return ""
        raise JudgeError(f"{last_error} (gave up after {self.config.max_retries + 1} attempts)")


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", exc))


def _first_content(response: Any) -> str:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return ""
    return (content or "").strip()
