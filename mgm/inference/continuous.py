"""Continuous batching: rows join and leave a running batch between decoding steps, sharing one KV cache."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from mgm.inference.cached_prefill import RowKey, prefill_row, remember
from mgm.inference.decoding import Row
from mgm.inference.context import check_context, request_token_count
from mgm.inference.requests import Request, RowResult
from mgm.inference.sampling import sample_next, sampling_top_k
from mgm.model.arch import output_cache
from mgm.model.kv_cache import growing_cache

if TYPE_CHECKING:  # annotations only: the engine starts continuous rows itself (stream with caches)
    from mgm.inference.engine import InferenceEngine


class ContinuousBatch:
    """A batch of rows decoded one token per `step()`, sharing one KV cache; new rows can `add()`
    between steps and finished rows leave at once (used by `DynamicBatcher` in continuous mode).

    Joining rows are prefilled together (images encoded, left padding, exactly as `model.generate`
    prepares them), then their cache is left-padded to the running length and stacked under the
    running rows; rows keep their own position ids. Leaving rows are cut out of the cache and the
    leading columns no row needs any more are trimmed. Sampling is per row (`mgm.inference.sampling`);
    other generation-config processors (repetition penalty, ...) are not applied.
    With the engine's caches on (`InferenceEngine.use_caches`), joining rows are prefilled one by one
    through them (`mgm.inference.cached_prefill`) and leaving rows hand their KV to the prefix cache.
    Shapes: mask [B, L] (1 = real token), positions / next_tokens [B], cache layers [B, heads, L, dim].
    """

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.next_tokens: torch.Tensor | None = None
        self.top_k = sampling_top_k(engine.model)
        self._keys: dict[int, RowKey] = {}  # rows prefilled through the engine's caches, by id(row)

    @property
    def size(self) -> int:
        return len(self.rows)

    def new_row(self, request: Request, **kwargs) -> Row:
        """A row for `request` (keyword arguments as `Row`: on_text, on_done, cancelled, max_tokens, on_error)."""
        return Row(self.engine, request, **kwargs)

    def _sample(self, logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        """logits [B, V] → next token ids [B]."""
        return sample_next(logits, [row.request.params for row in rows], self.top_k)

    def add(self, rows: list[Row]) -> None:
        """Prefill `rows` together and join them to the running batch (their first token is routed)."""
        if not rows:
            return
        if self.engine.caches is not None:
            rows = self._add_cached(rows)
            if not rows:
                return
        engine, model = self.engine, self.engine.model
        inputs = engine.batch_inputs([row.request for row in rows])
        with engine.lock, torch.inference_mode():
            if inputs.images is not None:  # as MGM's generate(): image features spliced in, rows re-padded on the left
                _, _, new_mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
                    inputs.ids, None, inputs.mask, None, None, inputs.images, inputs.images_aux,
                    padding_side="left")
                if new_mask is None:
                    new_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            else:
                embeds, new_mask = model.get_model().embed_tokens(inputs.ids), inputs.mask
            new_mask = new_mask.long()
            positions = (new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 1)
            out = model(inputs_embeds=embeds, attention_mask=new_mask, position_ids=positions,
                        past_key_values=growing_cache(), use_cache=True, logits_to_keep=1)
            tokens = self._sample(out.logits[:, -1, :], rows)
        self._join(output_cache(out), new_mask, new_mask.sum(-1), tokens, rows)
        self._route(tokens, rows)

    def _add_cached(self, rows: list[Row]) -> list[Row]:
        """Prefill rows one by one through the engine's caches, then join them; returns the rows that
        need the ordinary batched prefill. All or nothing, as a batched prefill: if one prefill fails,
        no row has joined (the batcher then retries them one by one, cheaply: the KV is cached)."""
        prefilled = [(row, prefill_row(self.engine, row.request)) for row in rows]
        for row, done in prefilled:
            if done is None:
                continue
            with torch.inference_mode():
                tokens = self._sample(done.logits, [row])
            self._keys[id(row)] = done.row_key
            self._join(done.cache, done.mask, done.next_position, tokens, [row])
            self._route(tokens, [row])
        return [row for row, done in prefilled if done is None]

    def step(self) -> None:
        """Decode one token for every running row (cancelled rows leave first)."""
        for row in self.rows:
            if not row.done and row.is_cancelled():
                row.finish("cancelled")
        self._leave()
        if not self.rows:
            return
        model = self.engine.model
        with self.engine.lock, torch.inference_mode():
            ones = torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype, device=self.mask.device)
            self.mask = torch.cat([self.mask, ones], dim=1)
            out = model(input_ids=self.next_tokens[:, None], attention_mask=self.mask,
                        position_ids=self.positions[:, None], past_key_values=self.cache, use_cache=True)
            tokens = self._sample(out.logits[:, -1, :], self.rows)
        self.cache = output_cache(out)
        self.positions = self.positions + 1
        self.next_tokens = tokens
        self._route(tokens, self.rows)

    def cancel_all(self, reason: str = "cancelled") -> None:
        for row in self.rows:
            row.finish(reason)
        self._leave()

    def fail_all(self, exc: BaseException) -> None:
        """Drop every row after a failed step, reporting `exc` to each row not yet done (`on_error`)."""
        for row in self.rows:
            row.fail(exc)
        self.rows = []
        self._reset()

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _route(self, tokens: torch.Tensor, rows: list[Row]) -> None:
        for row, token in zip(rows, tokens.tolist()):
            if (key := self._keys.get(id(row))) is not None:
                key.generated.append(token)
            row.push(token)
        self._leave()

    def _reset(self) -> None:
        self._keys.clear()
        self.cache = self.mask = self.positions = self.next_tokens = None

    def _join(self, cache, mask: torch.Tensor, next_positions: torch.Tensor, tokens: torch.Tensor,
              rows: list[Row]) -> None:
        if self.cache is None or not self.rows:
            self.cache, self.mask, self.positions, self.next_tokens, self.rows = cache, mask, next_positions, tokens, rows
            return
        width = max(self.mask.shape[1], mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([left_pad(old.keys, -2), left_pad(new.keys, -2)], dim=0)
            old.values = torch.cat([left_pad(old.values, -2), left_pad(new.values, -2)], dim=0)
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(mask, 1)], dim=0)
        self.positions = torch.cat([self.positions, next_positions])
        self.next_tokens = torch.cat([self.next_tokens, tokens])
        self.rows = self.rows + rows

    def _leave(self) -> None:
        """Remove finished rows; trim cache columns that only padding uses."""
        if all(not row.done for row in self.rows):
            return
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        for i, row in enumerate(self.rows):  # finished rows leave their KV to the prefix cache
            if row.done and (key := self._keys.pop(id(row), None)) is not None:
                remember(self.engine, key, self.cache, i, int(self.mask[i].sum()))
        if not keep:
            self.rows = []
            self._reset()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        lead = int(torch.nonzero(self.mask.any(dim=0))[0, 0])  # columns before this are padding for all rows
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))[..., lead:, :]
            layer.values = layer.values.index_select(0, index.to(layer.values.device))[..., lead:, :]
        self.mask = self.mask[:, lead:]
        self.positions = self.positions.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]


def decode_row(engine: InferenceEngine, request: Request, on_text: Callable[[str], None],
               cancelled: Callable[[], bool]) -> RowResult:
    """Generate one request as a one-row `ContinuousBatch` (`InferenceEngine.stream` with caches on):
    `on_text` gets each piece, `cancelled()` is polled every step."""
    room = check_context(engine, request_token_count(engine, request))
    batch = ContinuousBatch(engine)
    row = batch.new_row(request, on_text=on_text, cancelled=cancelled,
                        max_tokens=max(1, min(request.params.max_new_tokens, room)))
    try:
        batch.add([row])
        while not row.done:
            batch.step()
    finally:
        batch.cancel_all()
    return row.result
