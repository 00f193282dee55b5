"""A submitted request as its reader sees it: text so far, outcome, cancellation.

A ticket is read from asyncio (`async for text in ticket.updates()`) or from a thread
(`ticket.iter_text()`); pieces that arrive while the reader is busy are coalesced, so a slow reader
never falls behind token by token. Closing the reader (a client that disconnected) cancels the ticket.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator

from mgm.inference.requests import Request, RowResult


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
        self.room = 0  # tokens left in the context after the prompt (set when admitted)
        self.result: RowResult | None = None
        self.error: BaseException | None = None
        self.submitted_at = time.monotonic()
        self._cancel = threading.Event()
        self._cond = threading.Condition()
        self._pieces: list[str] = []
        self._finished = False
        self._loop = loop
        self._async_ready = asyncio.Event() if loop is not None else None
        self._async_done = asyncio.Event() if loop is not None else None
        self._wake_scheduled = False
        # set by a batcher that wakes its readers in groups (one loop call per decoding step, not per row)
        self._wake_queue: collections.deque[Ticket] | None = None

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

    async def updates(self, min_interval: float = 0.0) -> AsyncIterator[str]:
        """Yield the new text (coalesced) until the request ends; raise its error if it failed.

        min_interval: after yielding, let text gather for up to this many seconds before the next
        yield (the end of the request is never delayed). Fewer, larger pieces cost the server and
        the client far less per token when many streams run at once.
        Leaving the loop early (or the task being cancelled) cancels the request.
        """
        if self._async_ready is None or self._async_done is None:
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
                if text and min_interval > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._async_done.wait(), min_interval)
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
            if self._wake_queue is not None:
                self._wake_queue.append(self)
                return
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                self._cancel.set()

    @staticmethod
    def wake_all(tickets: list[Ticket]) -> None:
        """Wake several tickets' readers (run on their event loop)."""
        for ticket in tickets:
            ticket._wake()

    def _wake(self) -> None:
        with self._cond:
            self._wake_scheduled = False
            finished = self._finished
        assert self._async_ready is not None and self._async_done is not None
        self._async_ready.set()
        if finished:
            self._async_done.set()

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
