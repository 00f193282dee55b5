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
    matcher = StopMatcher(stops)
    matcher.feed(text)
    return matcher.pending


class StopMatcher:
    """Finds stop strings in text fed piece by piece, at a cost per character that does not depend on
    how many stop strings there are (an Aho-Corasick automaton, built once per request).

    `feed(piece)` returns the offset into everything fed so far where the earliest-starting stop string
    begins, or None; `pending` is then the length of the longest tail of the text that is the start of
    some stop string (the text to hold back). Building costs the total length of the stop strings, which
    the servers bound per request (mgm.serve.limits).
    """

    def __init__(self, stops: list[str]) -> None:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        longest = [0]  # length of the longest stop string that ends at this state
        for stop in stops:
            if not stop:
                continue
            state = 0
            for char in stop:
                nxt = goto[state].get(char)
                if nxt is None:
                    nxt = len(goto)
                    goto[state][char] = nxt
                    goto.append({})
                    depth.append(depth[state] + 1)
                    longest.append(0)
                state = nxt
            longest[state] = len(stop)
        fail = [0] * len(goto)
        queue = list(goto[0].values())
        for state in queue:  # breadth first: a state's fail link points to a shallower state
            for char, nxt in goto[state].items():
                link = fail[state]
                while link and char not in goto[link]:
                    link = fail[link]
                target = goto[link].get(char, 0)
                fail[nxt] = target if target != nxt else 0
                longest[nxt] = max(longest[nxt], longest[fail[nxt]])
                queue.append(nxt)
        self._goto, self._fail, self._depth, self._longest = goto, fail, depth, longest
        self._state = 0
        self._fed = 0

    @property
    def pending(self) -> int:
        """Characters at the end of the text that may be the start of a stop string."""
        return self._depth[self._state]

    def feed(self, piece: str) -> int | None:
        """Take the next text; the start offset (in all text fed) of the earliest stop string found, or None.

        The whole piece is read, so a longer stop string that starts earlier than a shorter one that
        ends first (both inside this piece) wins, as a search of the whole text would find.
        """
        goto, fail, longest = self._goto, self._fail, self._longest
        state = self._state
        first: int | None = None
        for index, char in enumerate(piece, self._fed):
            while state and char not in goto[state]:
                state = fail[state]
            state = goto[state].get(char, 0)
            if longest[state]:
                start = index - longest[state] + 1
                first = start if first is None else min(first, start)
        self._state = state
        self._fed += len(piece)
        return first


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
        self.stops = StopMatcher(request.params.stop)
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
        piece = self.decoder.push(token)
        self.raw += piece
        cut = self.stops.feed(piece)  # only the new text is read: the cost does not grow with the stops
        if cut is not None:
            self.raw = self.raw[:cut]
            self._emit(self.raw[len(result.text):])
            self.finish("stop_string")
            return
        keep = self.stops.pending
        self._emit(self.raw[len(result.text):len(self.raw) - keep])
        if result.completion_tokens >= self.max_tokens:
            self.finish("length")
