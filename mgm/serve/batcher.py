"""Dynamic batching for the servers: requests that arrive close together are generated together.

A `DynamicBatcher` owns one background thread in front of an `InferenceEngine`. `submit(request)`
returns a `Ticket` at once; the thread waits a short window (default 20 ms) after the first waiting
request for others, then runs them as ONE batched generation (`mgm.serve.engine.generate_rows`: rows
keep their own temperature / top_p / max_new_tokens / stop strings), streaming each row's text into
its ticket as it is produced. Requests that arrive while a batch runs wait for the next one, so N
concurrent clients cost about one generation each round instead of N.

A ticket is read from asyncio (`async for text in ticket.updates()`) or from a thread
(`for text in ticket.iter_text()`); pieces that arrive while the reader is busy are coalesced, so a
slow reader never falls behind token by token. Closing the reader (a client that disconnected)
cancels the ticket: a waiting request is dropped, a running row stops at the next step and the
other rows of its batch go on. Beam-search requests (num_beams > 1) cannot stream; they run alone
and deliver their whole answer at the end.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator

from mgm.errors import UserError
from mgm.serve.engine import InferenceEngine, Request, RowResult, context_limit, generate_rows, request_token_count

LOGGER_NAME = "mgm.serve.batcher"


class Ticket:
    """One submitted request: its text so far, its outcome, and a way to cancel it.

    After the reader has seen the end, `result` holds the RowResult (text, completion_tokens,
    finish_reason "stop" | "length" | "cancelled") and `prompt_tokens` the prompt length as the model
    saw it (image tokens included); `error` holds the exception if the request failed.
    """

    _ids = itertools.count(1)

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request = request
        self.id = next(self._ids)
        self.prompt_tokens = 0
        self.result: RowResult | None = None
        self.error: BaseException | None = None
        self.submitted_at = time.monotonic()
        self._cancel = threading.Event()
        self._cond = threading.Condition()
        self._pieces: list[str] = []
        self._finished = False
        self._loop = loop
        self._async_ready = asyncio.Event() if loop is not None else None
        self._wake_scheduled = False

    # -- consumer side ----------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Stop this request (no-op once finished)."""
        self._cancel.set()

    def _take(self) -> tuple[str, bool]:
        with self._cond:
            text = "".join(self._pieces)
            self._pieces.clear()
            return text, self._finished

    async def updates(self) -> AsyncIterator[str]:
        """Yield the new text (coalesced) until the request ends; raise its error if it failed.

        Leaving the loop early (or the task being cancelled) cancels the request.
        """
        if self._async_ready is None:
            raise RuntimeError("this ticket was submitted without an event loop; use iter_text()")
        finished = False
        try:
            while True:
                await self._async_ready.wait()
                self._async_ready.clear()
                text, finished = self._take()
                if text:
                    yield text
                if finished:
                    break
        finally:
            if not finished:
                self.cancel()
        if self.error is not None:
            raise self.error

    def iter_text(self, timeout: float | None = None) -> Iterator[str]:
        """Blocking twin of `updates()` for threads; `timeout` (s) bounds each wait (TimeoutError)."""
        finished = False
        try:
            while True:
                with self._cond:
                    if not self._pieces and not self._finished:
                        if not self._cond.wait(timeout):
                            raise TimeoutError(f"no output from the model for {timeout} s")
                text, finished = self._take()
                if text:
                    yield text
                if finished:
                    break
        finally:
            if not finished:
                self.cancel()
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> RowResult:
        """Block until the request ends; return its RowResult (raise its error)."""
        for _ in self.iter_text(timeout):
            pass
        assert self.result is not None
        return self.result

    # -- producer side (the batcher thread) -------------------------------------------------------
    def _notify(self) -> None:
        # called with self._cond held
        self._cond.notify_all()
        if self._loop is not None and not self._wake_scheduled:
            self._wake_scheduled = True  # one wake-up per burst of pieces, not one per token
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                self._cancel.set()

    def _wake(self) -> None:
        with self._cond:
            self._wake_scheduled = False
        assert self._async_ready is not None
        self._async_ready.set()

    def push_text(self, piece: str) -> None:
        with self._cond:
            self._pieces.append(piece)
            self._notify()

    def finish(self, result: RowResult | None = None, error: BaseException | None = None) -> None:
        with self._cond:
            if self._finished:
                return
            self.result = result if result is not None else RowResult(finish_reason="cancelled")
            self.error = error
            self._finished = True
            self._notify()


class DynamicBatcher:
    """Collects concurrent requests into batched generations on a background thread.

    max_batch_size: most requests generated together. batch_window: seconds to wait, after the first
    waiting request, for more to join its batch (0 = take only what is already waiting).
    """

    def __init__(self, engine: InferenceEngine, max_batch_size: int = 8, batch_window: float = 0.02,
                 logger: logging.Logger | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_window < 0:
            raise ValueError(f"batch_window must be >= 0, got {batch_window}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self._queue: queue.Queue[Ticket] = queue.Queue()
        self._live: set[Ticket] = set()
        self._live_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.largest_batch = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> DynamicBatcher:
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="mgm-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything live, end the thread, fail what is still queued."""
        self._stopping.set()
        with self._live_lock:
            for ticket in self._live:
                ticket.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                ticket = self._queue.get_nowait()
            except queue.Empty:
                break
            self._close(ticket, error=RuntimeError("the model worker is shutting down"))

    def __enter__(self) -> DynamicBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_length(self) -> int:
        """Requests submitted and not finished yet (waiting or generating)."""
        with self._live_lock:
            return len(self._live)

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> Ticket:
        """Queue `request`; pass the running event loop to read the ticket with `updates()`."""
        if not self.running or self._stopping.is_set():
            raise RuntimeError("the batcher is not running (call start())")
        ticket = Ticket(request, loop)
        with self._live_lock:
            self._live.add(ticket)
        self._queue.put(ticket)
        return ticket

    def submit_async(self, request: Request) -> Ticket:
        """`submit` from a coroutine (binds the ticket to the running loop)."""
        return self.submit(request, asyncio.get_running_loop())

    # -- the thread -------------------------------------------------------------------------------
    def _close(self, ticket: Ticket, result: RowResult | None = None, error: BaseException | None = None) -> None:
        ticket.finish(result, error)
        with self._live_lock:
            self._live.discard(ticket)

    def _collect(self) -> list[Ticket]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_window
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._collect()
            if not batch:
                continue
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never let the thread die with tickets waiting
                self.logger.exception("batch failed")
                for ticket in batch:
                    if not ticket.finished:
                        self._close(ticket, error=exc)

    def _admit(self, ticket: Ticket) -> bool:
        """Check one request alone (so a bad one fails by itself, not its batch)."""
        if ticket.cancelled:
            self._close(ticket, RowResult(finish_reason="cancelled"))
            return False
        try:
            ticket.prompt_tokens = request_token_count(self.engine, ticket.request)
            limit = context_limit(self.engine)
            if ticket.prompt_tokens + 1 > limit:
                raise UserError(f"the prompt is {ticket.prompt_tokens} tokens (image tokens included), over the "
                                f"model's context of {limit}; shorten it or start a new conversation")
        except Exception as exc:
            self._close(ticket, error=exc)
            return False
        return True

    def _run_batch(self, batch: list[Ticket]) -> None:
        admitted = [t for t in batch if self._admit(t)]
        streaming = [t for t in admitted if t.request.params.num_beams == 1]
        for ticket in admitted:
            if ticket.request.params.num_beams != 1:
                self._run_beam(ticket)
        if not streaming:
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(streaming))
        started = time.monotonic()
        emitted = [False]
        try:
            results = self._generate(streaming, emitted)
        except Exception as exc:
            if len(streaming) > 1 and not emitted[0]:
                # failed before any text: retry one by one so only the culprit fails
                self.logger.warning("batch of %d failed (%s: %s); retrying its requests one by one",
                                    len(streaming), type(exc).__name__, exc)
                for ticket in streaming:
                    try:
                        result = self._generate([ticket])[0]
                    except Exception as single_exc:
                        self._log_failure(single_exc)
                        self._close(ticket, error=single_exc)
                    else:
                        self._close(ticket, result)
                return
            self._log_failure(exc)
            for ticket in streaming:
                self._close(ticket, error=exc)
            return
        for ticket, result in zip(streaming, results):
            self._close(ticket, result)
        self.logger.debug("batch of %d done in %.3f s", len(streaming), time.monotonic() - started)

    def _generate(self, tickets: list[Ticket], emitted: list[bool] | None = None) -> list[RowResult]:
        def on_text(i: int, piece: str) -> None:
            if emitted is not None:
                emitted[0] = True
            tickets[i].push_text(piece)

        return generate_rows(self.engine, [t.request for t in tickets], on_text=on_text,
                             cancelled=lambda i: tickets[i].cancelled or self._stopping.is_set())

    def _run_beam(self, ticket: Ticket) -> None:
        try:
            text = self.engine.generate([ticket.request])[0]
            n_tokens = len(self.engine.tokenizer(text, add_special_tokens=False).input_ids)
        except Exception as exc:
            self._log_failure(exc)
            self._close(ticket, error=exc)
            return
        if text:
            ticket.push_text(text)
        reason = "length" if n_tokens >= ticket.request.params.max_new_tokens else "stop"
        self._close(ticket, RowResult(text=text, completion_tokens=n_tokens, finish_reason=reason))

    def _log_failure(self, exc: BaseException) -> None:
        if isinstance(exc, (UserError, ValueError)):
            self.logger.info("request refused: %s", exc)
        else:
            self.logger.error("generation failed", exc_info=exc)
