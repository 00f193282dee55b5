"""Dynamic batching for the servers: concurrent requests are generated together, not one after another.

A `DynamicBatcher` owns one background thread in front of an `InferenceEngine`; `submit(request)`
returns a `Ticket` at once. Every row keeps its own temperature / top_p / max_new_tokens / stop
strings, and its text streams into its ticket as it is produced. Two modes:

- continuous (default): an idle batcher gathers a first burst (until no request arrives for
  `batch_window`, default 20 ms, at most `max_wait`), prefills it as one batch and decodes it token by
  token (`mgm.inference.continuous.ContinuousBatch`); requests that arrive meanwhile join the running batch at
  the next step, and finished rows leave at once, so nobody waits for someone else's long answer.
- window: the gathered burst runs as ONE `generate` call (`mgm.inference.rows.generate_rows`);
  requests that arrive meanwhile wait for the next one.

Servers announce requests still being prepared (images decoding) with `expect()`, so a forming
burst waits for them. A ticket is read from asyncio (`async for text in ticket.updates()`) or from a
thread (`ticket.iter_text()`); pieces that arrive while the reader is busy are coalesced, so a slow
reader never falls behind token by token. Closing the reader (a client that disconnected) cancels the
ticket: a waiting request is dropped, a running row stops at the next step and the other rows go on.
Beam-search requests (num_beams > 1) cannot stream; they run alone and deliver their answer at the end.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time

from mgm.errors import UserError
from mgm.inference.continuous import ContinuousBatch
from mgm.inference.engine import InferenceEngine, check_context, request_token_count
from mgm.inference.requests import Request, RowResult
from mgm.inference.rows import generate_rows
from mgm.inference.tickets import Ticket

LOGGER_NAME = "mgm.serve.batcher"
EXPECT_TTL = 2.0  # seconds an announced (expect()) request keeps a forming batch waiting at most


class DynamicBatcher:
    """Collects concurrent requests into batched generations on a background thread.

    max_batch_size: most requests generated together. batch_window: a forming batch closes once this
    many seconds pass without a new request (0 = take only what is already waiting). max_wait: the
    longest a forming batch waits in all (default 5 x batch_window), also for requests announced with
    `expect()` that have not arrived yet. continuous: rows join and leave a running batch between
    tokens (True, default) or each gathered batch runs to its end (False, "window" mode).
    """

    def __init__(self, engine: InferenceEngine, max_batch_size: int = 8, batch_window: float = 0.02,
                 logger: logging.Logger | None = None, max_wait: float | None = None,
                 continuous: bool = True) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_window < 0:
            raise ValueError(f"batch_window must be >= 0, got {batch_window}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window
        self.max_wait = max_wait if max_wait is not None else 5 * batch_window
        self.continuous = continuous
        self._expected: dict[int, float] = {}
        self._wake_queue: collections.deque[Ticket] = collections.deque()
        self._expect_ids = itertools.count(1)
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self._queue: queue.Queue[Ticket] = queue.Queue()
        self._live: set[Ticket] = set()
        self._live_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # statistics: batched prefills / generate calls, the requests in them, the most rows at once;
        # continuous mode also counts decoding steps and the rows they carried (mean batch = ratio)
        self.batches_run = 0
        self.largest_batch = 0
        self.rows_run = 0
        self.steps_run = 0
        self.row_steps = 0

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

    def stats(self) -> dict[str, int]:
        """Counters since start: batched generations, rows generated in them, the largest batch."""
        return {"batches": self.batches_run, "rows": self.rows_run, "largest_batch": self.largest_batch,
                "steps": self.steps_run, "row_steps": self.row_steps}

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

    # -- announcing requests that are on their way (so a batch waits for them) ----------------------
    def expect(self) -> int:
        """Announce a request that will be submitted soon (its images are being decoded, say).

        While announced requests are pending, a forming batch waits for them (up to `max_wait`).
        Returns a token for `fulfil`; a token never fulfilled stops counting after EXPECT_TTL seconds.
        """
        with self._live_lock:
            token = next(self._expect_ids)
            self._expected[token] = time.monotonic()
            return token

    def fulfil(self, token: int | None) -> None:
        """The announced request was submitted or dropped (idempotent)."""
        if token is not None:
            with self._live_lock:
                self._expected.pop(token, None)

    def _pending_arrivals(self) -> int:
        now = time.monotonic()
        with self._live_lock:
            stale = [t for t, at in self._expected.items() if now - at > EXPECT_TTL]
            for token in stale:
                del self._expected[token]
            return len(self._expected)

    def _collect(self) -> list[Ticket]:
        """Wait for a first request, then gather more: until `batch_window` passes without a new one
        and no announced request is pending, the batch is full, or `max_wait` has passed."""
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        start = last = time.monotonic()
        while len(batch) < self.max_batch_size:
            now = time.monotonic()
            cap = start + self.max_wait
            deadline = cap if self._pending_arrivals() else min(cap, last + self.batch_window)
            remaining = deadline - now
            try:
                # short polls while waiting for announced requests: they may be dropped instead
                timeout = min(remaining, self.batch_window or remaining)
                batch.append(self._queue.get(timeout=timeout) if remaining > 0 else self._queue.get_nowait())
                last = time.monotonic()
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
        return batch

    def _run(self) -> None:
        if self.continuous:
            self._run_continuous()
            return
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

    # -- continuous mode --------------------------------------------------------------------------
    def _drain(self, limit: int) -> list[Ticket]:
        """Whatever is waiting, without blocking (at most `limit`)."""
        out: list[Ticket] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _flush_wakes(self) -> None:
        """Schedule the readers woken during the last step: one event-loop call per loop."""
        by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[Ticket]]] = {}
        while True:
            try:
                ticket = self._wake_queue.popleft()
            except IndexError:
                break
            assert ticket._loop is not None
            by_loop.setdefault(id(ticket._loop), (ticket._loop, []))[1].append(ticket)
        for loop, tickets in by_loop.values():
            try:
                loop.call_soon_threadsafe(Ticket.wake_all, tickets)
            except RuntimeError:  # that loop is closed: nobody reads these tickets any more
                for ticket in tickets:
                    ticket.cancel()

    def _row(self, batch: ContinuousBatch, ticket: Ticket):
        if ticket._loop is not None:
            ticket._wake_queue = self._wake_queue
        return batch.new_row(ticket.request, on_text=ticket.push_text,
                             on_done=lambda result: self._close(ticket, result),
                             cancelled=lambda: ticket.cancelled or self._stopping.is_set(),
                             on_error=lambda exc: self._close(ticket, error=exc),
                             max_tokens=max(1, min(ticket.request.params.max_new_tokens, ticket.room)))

    def _join(self, batch: ContinuousBatch, tickets: list[Ticket]) -> None:
        """Prefill newcomers into the running batch; if that fails, retry them one by one."""
        rows = {id(t): self._row(batch, t) for t in tickets}
        try:
            batch.add([rows[id(t)] for t in tickets])
        except Exception as exc:
            if len(tickets) == 1:
                self._log_failure(exc)
                self._close(tickets[0], error=exc)
                return
            self.logger.warning("prefill of %d requests failed (%s: %s); retrying them one by one",
                                len(tickets), type(exc).__name__, exc)
            for ticket in tickets:
                if not ticket.finished:
                    self._join(batch, [ticket])
            return
        self.batches_run += 1
        self.rows_run += len(tickets)

    def _run_continuous(self) -> None:
        batch = ContinuousBatch(self.engine)
        while not self._stopping.is_set():
            try:
                # idle: wait for a first request and gather a burst; busy: take whoever is waiting now
                arrivals = self._collect() if batch.size == 0 else self._drain(self.max_batch_size - batch.size)
                admitted = [t for t in arrivals if self._admit(t)]
                for ticket in admitted:
                    if ticket.request.params.num_beams != 1:
                        self._run_beam(ticket)
                newcomers = [t for t in admitted if t.request.params.num_beams == 1]
                if newcomers:
                    self._join(batch, newcomers)
                if batch.size:
                    self.largest_batch = max(self.largest_batch, batch.size)
                    self.steps_run += 1
                    self.row_steps += batch.size
                    batch.step()
            except BaseException as exc:  # a failed step: its rows fail, the thread goes on
                self._log_failure(exc)
                batch.fail_all(exc)
            finally:
                self._flush_wakes()
        batch.cancel_all()
        self._flush_wakes()

    def _admit(self, ticket: Ticket) -> bool:
        """Check one request alone (so a bad one fails by itself, not its batch)."""
        if ticket.cancelled:
            self._close(ticket, RowResult(finish_reason="cancelled"))
            return False
        try:
            ticket.prompt_tokens = request_token_count(self.engine, ticket.request)
            ticket.room = check_context(self.engine, ticket.prompt_tokens)
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
        self.rows_run += len(streaming)
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
                    if ticket.finished:
                        continue
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
                             cancelled=lambda i: tickets[i].cancelled or self._stopping.is_set(),
                             on_done=lambda i, result: self._close(tickets[i], result))

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
