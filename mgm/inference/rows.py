"""Per-row streaming batched generation: one `model.generate` call for many requests.

Each request keeps its own temperature / top_p / max_new_tokens / stop strings; each row's text
streams as it is produced and a row ends early (stop string, own token budget, cancelled client)
without stopping the others. Used by `DynamicBatcher` in window mode and by `InferenceEngine.stream`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from mgm.inference.decoding import Row
from mgm.inference.requests import Request, RowResult
from mgm.inference.sampling import row_sampling_processor, sampling_top_k

if TYPE_CHECKING:  # annotations only: the engine imports this module to stream
    from mgm.inference.engine import InferenceEngine


class RowStreamer:
    """A transformers streamer fed `[B]` token tensors each step; routes them to the rows."""

    def __init__(self, engine: InferenceEngine, requests: list[Request],
                 on_text: Callable[[int, str], None] | None, cancelled: Callable[[int], bool] | None,
                 on_done: Callable[[int, RowResult], None] | None = None) -> None:
        self.rows = [
            Row(engine, request,
                on_text=None if on_text is None else (lambda piece, i=i: on_text(i, piece)),
                on_done=None if on_done is None else (lambda result, i=i: on_done(i, result)),
                cancelled=None if cancelled is None else (lambda i=i: cancelled(i)))
            for i, request in enumerate(requests)]
        self.prompt_seen = False

    @property
    def done(self) -> list[bool]:
        return [row.done for row in self.rows]

    @property
    def results(self) -> list[RowResult]:
        return [row.result for row in self.rows]

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 2 and not self.prompt_seen:  # generate() first pushes the prompt ids
            self.prompt_seen = True
            return
        self.prompt_seen = True
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            row.push(token)

    def end(self) -> None:
        for row in self.rows:
            row.finish("cancelled" if row.is_cancelled() else "length")


def generate_rows(engine: InferenceEngine, requests: list[Request],
                  on_text: Callable[[int, str], None] | None = None,
                  cancelled: Callable[[int], bool] | None = None,
                  on_done: Callable[[int, RowResult], None] | None = None) -> list[RowResult]:
    """Generate answers for `requests` in ONE batched `generate`, streaming each row's text.

    Rows may differ in temperature, top_p, max_new_tokens and stop strings (num_beams must be 1:
    beam search cannot stream; use `engine.generate`). Callbacks run on this thread: `on_text(i, piece)`
    with each new piece of row i (stop strings never reach it); `cancelled(i)` is polled every step
    and ends row i early; `on_done(i, result)` as soon as row i is finished (its client need not wait
    for the longest row). Returns one RowResult per request, in order.
    """
    from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    if not requests:
        return []
    if any(r.params.num_beams != 1 for r in requests):
        raise ValueError("generate_rows streams, so it needs num_beams=1 for every request")
    inputs = engine.batch_inputs(requests)
    streamer = RowStreamer(engine, requests, on_text, cancelled, on_done)

    class RowsDone(StoppingCriteria):
        # evaluated right after streamer.put() saw this step's tokens: [B] bool, True = row finished
        def __call__(self, input_ids, scores, **kw):
            flags = [d or (cancelled is not None and cancelled(i)) for i, d in enumerate(streamer.done)]
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    kwargs: dict = dict(max_new_tokens=max(r.params.max_new_tokens for r in requests), num_beams=1,
                        stopping_criteria=StoppingCriteriaList([RowsDone()]), streamer=streamer,
                        **engine.generate_kwargs())
    params = [r.params for r in requests]
    if all(not p.do_sample for p in params):
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        # the per-row processor does all warping; switch off the global warpers
        processor = row_sampling_processor(params, sampling_top_k(engine.model), inputs.ids.device)
        kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      logits_processor=LogitsProcessorList([processor]))
    with engine.lock, torch.inference_mode():
        engine.model.generate(inputs.ids, **inputs.generate_kwargs(), **kwargs)
    return streamer.results
