"""Generated token ids → text, once for every streaming path: incremental decoding and stop strings.

`Row` follows one request through generation (`generate_rows`, `ContinuousBatch`, `engine.stream`):
it decodes each new token, holds back text that may be the start of a stop string, cuts the answer
at a stop string, counts tokens against its budget and reports the end once.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mgm.inference.requests import Request, RowResult


class IncrementalDecoder:
    """Token ids → text increments without re-decoding the whole answer each step.

    Decodes a short window of previous tokens plus the new ones and emits what the new tokens added
    (the window keeps sentencepiece's leading-space handling right); holds text back while it ends in
    an incomplete UTF-8 sequence (U+FFFD). With a `ByteFallback` decoder, which turns a whole run of byte
    pieces into U+FFFDs once any byte of it is invalid, text is also held while the last token is a
    byte piece, so the pieces always add up to `tokenizer.decode` of all ids (the profile's text).
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        # sentencepiece's own decoding replaces each invalid byte alone: no run to wait for
        self.hold_byte_runs = not getattr(tokenizer, "decodes_bytes_alone", False)

    def _window(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        return prefix, decode(self.ids[self.prefix_offset:], skip_special_tokens=True)

    def _is_byte_piece(self, token_id: int) -> bool:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        return isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.hold_byte_runs and self._is_byte_piece(token_id):
            return ""  # the run's text is decided when it ends
        prefix, full = self._window()
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. a lone byte token at the very end), as U+FFFD if need be."""
        prefix, full = self._window()
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]


def trim_stop(text: str, stop: list[str]) -> str:
    """`text` cut before the first stop string it contains, stripped."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[:min(cuts)] if cuts else text).strip()


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could be the start of a stop string (not yet sent)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class Row:
    """One request being generated: routes its tokens to text, applies its stop rules, reports.

    on_text(piece) gets each new piece of text (a stop string never reaches it); on_done(result) is
    called once when the row ends; cancelled() is polled before each token; on_error(exc) when the
    batch it runs in fails. `max_tokens` overrides the request's max_new_tokens (e.g. to stay inside
    the context). `engine` supplies the tokenizer and the end-of-sequence ids.
    """

    def __init__(self, engine: Any, request: Request, *,
                 on_text: Callable[[str], None] | None = None, on_done: Callable[[RowResult], None] | None = None,
                 cancelled: Callable[[], bool] | None = None, max_tokens: int | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.request = request
        self.on_text = on_text
        self.on_done = on_done
        self.on_error = on_error
        self.cancelled = cancelled
        self.max_tokens = request.params.max_new_tokens if max_tokens is None else max_tokens
        self.eos = engine.eos_ids
        self.decoder = IncrementalDecoder(engine.tokenizer)
        self.result = RowResult()
        self.raw = ""  # decoded text, including what is held back for a possible stop string
        self.done = False

    def is_cancelled(self) -> bool:
        return self.cancelled is not None and self.cancelled()

    def _emit(self, piece: str) -> None:
        if piece:
            self.result.text += piece
            if self.on_text is not None:
                self.on_text(piece)

    def finish(self, reason: str) -> None:
        """End the row: "stop", "length", "cancelled" (held-back text is flushed) or "stop_string"."""
        if self.done:
            return
        self.done = True
        if reason == "stop_string":
            reason = "stop"
        else:
            # flush text held back for a possible stop string (or an unfinished character) that did not come
            self.raw += self.decoder.flush()
            self._emit(self.raw[len(self.result.text):])
        self.result.finish_reason = reason
        if self.on_done is not None:
            self.on_done(self.result)

    def fail(self, exc: BaseException) -> None:
        """End the row because its batch failed (`on_error`, not `on_done`)."""
        if not self.done:
            self.done = True
            if self.on_error is not None:
                self.on_error(exc)

    def push(self, token: int) -> None:
        """Take the next generated token (ignored once the row is done)."""
        if self.done:
            return
        if self.is_cancelled():
            self.finish("cancelled")
            return
        if token in self.eos:
            self.finish("stop")
            return
        result = self.result
        result.completion_tokens += 1
        self.raw += self.decoder.push(token)
        stops = self.request.params.stop
        hits = [self.raw.find(s) for s in stops if s and s in self.raw]
        if hits:
            self.raw = self.raw[:min(hits)]
            self._emit(self.raw[len(result.text):])
            self.finish("stop_string")
            return
        keep = held_back(self.raw, stops)
        self._emit(self.raw[len(result.text):len(self.raw) - keep])
        if result.completion_tokens >= self.max_tokens:
            self.finish("length")
