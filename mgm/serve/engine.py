"""One inference engine per loaded model, shared by the CLI, the model worker, the web demo and eval.

It turns (templated prompt, images, sampling parameters) into text: batched generation for many
requests at once (left padding, several images per request, text-only rows mixed in) and streaming
for one. `DynamicBatcher` (mgm.serve.batcher) builds request batching for servers on top of it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from PIL import Image

from mgm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from mgm.data.image import images_to_batch
from mgm.errors import UserError
from mgm.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token


@dataclass
class GenerationParams:
    """Sampling parameters of one request (temperature <= 0.001 means greedy, as the original worker)."""

    temperature: float = 0.2
    top_p: float | None = None
    max_new_tokens: int = 512
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0.001

    def key(self) -> tuple:
        """Requests with equal keys can share one `generate` call."""
        return (round(self.temperature, 6), self.top_p, self.num_beams, tuple(self.stop))

    def to_generate_kwargs(self) -> dict:
        kwargs: dict = dict(do_sample=self.do_sample, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:  # normalise to greedy without sampling parameters (MGM_SPEC Appendix B)
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Request:
    """A fully templated prompt (with one `<image>` per image) and its images."""

    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    params: GenerationParams = field(default_factory=GenerationParams)
    # (tokenizer, prompt, ids) of the last encode_prompt: a request is sized by its server, admitted by
    # the batcher and prefilled, and each of them needs the same ids
    _encoded: tuple[Any, str, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)


class InferenceEngine:
    """Wraps `(tokenizer, model, image_processor)` from `load_pretrained_model`."""

    def __init__(self, tokenizer, model, image_processor, context_len: int = 2048,
                 extra_eos_tokens: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.image_processor = image_processor
        self.context_len = context_len
        self.lock = threading.Lock()  # one generate() at a time on a model
        eos = tokenizer.eos_token_id
        self.eos_ids: list[int] = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for extra in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])):
            if extra not in self.eos_ids:
                self.eos_ids.append(extra)
        for token in extra_eos_tokens:
            self.add_eos_token(token)

    @property
    def device(self) -> torch.device:
        return self.model.get_model().embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        tower = self.model.get_vision_tower()
        return tower.dtype if tower is not None else self.model.dtype

    def add_eos_token(self, token: str) -> None:
        """Also stop on `token` when it is a single vocabulary entry (e.g. `<|eot_id|>` for llama_3)."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id not in self.eos_ids:
            self.eos_ids.append(token_id)

    # -- inputs ---------------------------------------------------------------------------------------
    def encode_prompt(self, request: Request) -> torch.Tensor:
        n_tags = request.prompt.count(DEFAULT_IMAGE_TOKEN)
        if n_tags != len(request.images):
            raise UserError(f"the prompt has {n_tags} <image> tags but {len(request.images)} images were given")
        if request.images and self.model.get_vision_tower() is None:
            raise UserError("this model has no vision tower; send text only")
        cached = request._encoded
        if cached is not None and cached[0] is self.tokenizer and cached[1] == request.prompt:
            return cached[2]
        ids = tokenizer_image_token(request.prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        request._encoded = (self.tokenizer, request.prompt, ids)
        return ids

    def image_tensors(self, images: list[Image.Image | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        lr, hr = images_to_batch(images, self.image_processor, self.model.mgm_settings)
        lr = lr.to(device=self.device, dtype=self.dtype)
        return lr, (hr.to(device=self.device, dtype=self.dtype) if hr is not None else None)

    def num_image_tokens(self) -> int:
        tower = self.model.get_vision_tower()
        if tower is None:
            return 0
        s = self.model.mgm_settings
        return tower.num_patches * (s.image_grid**2 + (1 if s.image_global and s.image_grid > 1 else 0))

    def _batch_inputs(self, requests: list[Request]):
        rows = [self.encode_prompt(r) for r in requests]
        any_images = any(r.images for r in requests)
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        images = None
        images_aux = None
        if any_images:
            # One image block per <image>, in row order; text-only rows consume a dummy block (as the
            # original's training batches do), so rows and blocks stay aligned.
            flat: list[Image.Image | None] = []
            for r in requests:
                flat.extend(r.images if r.images else [None])
            images, images_aux = self.image_tensors(flat)
        for r, row in zip(requests, rows):
            total = len(row) + (self.num_image_tokens() - 1) * len(r.images)
            limit = getattr(self.model.config, "max_position_embeddings", None) or self.context_len
            if total + 1 > limit:
                raise UserError(f"the prompt is {total} tokens (image tokens included), over the model's "
                                f"context of {limit}; shorten it or start a new conversation")
        return ids.to(self.device), mask.to(self.device), images, images_aux

    def _stopping(self, params: GenerationParams, ids: torch.Tensor):
        if not params.stop:
            return None
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([KeywordsStoppingCriteria(params.stop, self.tokenizer, ids)])

    def _generate_kwargs(self, params: GenerationParams, ids: torch.Tensor) -> dict:
        kwargs = params.to_generate_kwargs()
        kwargs.update(eos_token_id=self.eos_ids or None, use_cache=True,
                      pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                      else (self.eos_ids[0] if self.eos_ids else None))
        stopping = self._stopping(params, ids)
        if stopping is not None:
            kwargs["stopping_criteria"] = stopping
        return kwargs

    def trim_stop(self, text: str, stop: list[str]) -> str:
        for s in stop:
            cut = text.find(s)
            if cut != -1:
                text = text[:cut]
        return text.strip()

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[str]:
        """Answers for requests sharing one set of sampling parameters, in one batched call."""
        if not requests:
            return []
        params = requests[0].params
        ids, mask, images, images_aux = self._batch_inputs(requests)
        kwargs = self._generate_kwargs(params, ids)
        with self.lock, torch.inference_mode():
            out = self.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask, **kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [self.trim_stop(t, params.stop) for t in texts]

    def generate_ids(self, requests: list[Request]) -> torch.Tensor:
        """New token ids (padded with pad/eos) for a batch, for callers that need tokens, not text."""
        params = requests[0].params
        ids, mask, images, images_aux = self._batch_inputs(requests)
        with self.lock, torch.inference_mode():
            return self.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask,
                                       **self._generate_kwargs(params, ids))

    def stream(self, request: Request, cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces of one answer as they are generated; `cancel` stops generation early."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids, mask, images, images_aux = self._batch_inputs([request])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        kwargs = self._generate_kwargs(request.params, ids)
        criteria = list(kwargs.pop("stopping_criteria", []) or [])
        if cancel is not None:
            class _Cancelled(StoppingCriteria):
                def __call__(self, input_ids, scores, **kw):
                    return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

            criteria.append(_Cancelled())
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        error: list[BaseException] = []

        def run() -> None:
            try:
                with self.lock, torch.inference_mode():
                    self.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask,
                                        streamer=streamer, **kwargs)
            except BaseException as exc:  # surfaced to the consumer below
                error.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            hit = [s for s in request.params.stop if s in text]
            if hit:
                before = text[: min(text.find(s) for s in hit)]
                yield before[len(text) - len(piece):] if len(before) > len(text) - len(piece) else ""
                if cancel is not None:
                    cancel.set()
                break
            yield piece
        thread.join()
        if error:
            raise error[0]


# -- per-row streaming batched generation (used by mgm.serve.batcher.DynamicBatcher) -----------------
# One `model.generate` call for many requests, each with its own temperature / top_p / max_new_tokens /
# stop strings, streaming each row's text as it is produced and letting a row end early (stop string,
# own token budget, cancelled client) without stopping the others.
from collections.abc import Callable  # noqa: E402 (kept with the code that uses it)


@dataclass
class RowResult:
    """Outcome of one row of `generate_rows`.

    finish_reason: "stop" (end-of-sequence token or stop string), "length" (its max_new_tokens reached)
    or "cancelled" (its `cancelled(i)` turned true). completion_tokens counts generated tokens, the
    end-of-sequence token excluded.
    """

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None


def request_token_count(engine: InferenceEngine, request: Request) -> int:
    """Prompt length in tokens as the model sees it (every image counted as `num_image_tokens()`)."""
    ids = engine.encode_prompt(request)
    return int(ids.shape[-1]) + (engine.num_image_tokens() - 1) * len(request.images)


def context_limit(engine: InferenceEngine) -> int:
    """The model's position limit (max_position_embeddings, else the loader's context length)."""
    return int(getattr(engine.model.config, "max_position_embeddings", None) or engine.context_len)


class _IncrementalDecoder:
    """Token ids → text increments without re-decoding the whole answer each step.

    Decodes a short window of previous tokens plus the new ones and emits what the new tokens added
    (the window keeps sentencepiece's leading-space handling right); holds text back while it ends in
    an incomplete UTF-8 sequence (U+FFFD).
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        full = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. a lone byte token at the very end), as U+FFFD if need be."""
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        full = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could be the start of a stop string (not yet sent)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class _Row:
    """One request being generated: routes its tokens to text, applies its stop rules, reports.

    on_text(piece) gets each new piece of text (a stop string never reaches it); on_done(result) is
    called once when the row ends; cancelled() is polled before each token; on_error(exc) when the
    batch it runs in fails. `max_tokens` overrides the request's max_new_tokens (e.g. to stay inside
    the context).
    """

    def __init__(self, engine: InferenceEngine, request: Request, *,
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
        self.decoder = _IncrementalDecoder(engine.tokenizer)
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
        keep = _held_back(self.raw, stops)
        self._emit(self.raw[len(result.text):len(self.raw) - keep])
        if result.completion_tokens >= self.max_tokens:
            self.finish("length")


class _RowStreamer:
    """A transformers streamer fed `[B]` token tensors each step; routes them to the rows."""

    def __init__(self, engine: InferenceEngine, requests: list[Request],
                 on_text: Callable[[int, str], None] | None, cancelled: Callable[[int], bool] | None,
                 on_done: Callable[[int, RowResult], None] | None = None) -> None:
        self.rows = [
            _Row(engine, request,
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


def _row_sampling_processor(requests: list[Request], top_k: int, device: torch.device):
    """A logits processor applying each row's own temperature, top-k and top-p (greedy rows: argmax).

    Mirrors transformers' warpers (temperature → top-k → top-p, one token always kept), row by row, so
    rows with different sampling parameters can share one sampled `generate` call.
    scores: [B, V] → [B, V].
    """
    from transformers import LogitsProcessor

    greedy = torch.tensor([not r.params.do_sample for r in requests], device=device)
    temps = torch.tensor([r.params.temperature if r.params.do_sample else 1.0 for r in requests],
                         dtype=torch.float32, device=device)
    top_p = torch.tensor([r.params.top_p if (r.params.top_p is not None and r.params.do_sample) else 1.0
                          for r in requests], dtype=torch.float32, device=device)

    class RowSampling(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            neg = torch.finfo(scores.dtype).min
            out = scores / temps.to(scores.dtype)[:, None]
            if top_k > 0:
                kth = torch.topk(out, min(top_k, out.shape[-1]), dim=-1).values[:, -1:]
                out = out.masked_fill(out < kth, neg)
            if bool((top_p < 1.0).any()):
                sorted_logits, sorted_idx = torch.sort(out, descending=False)
                cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
                remove = cumulative <= (1 - top_p)[:, None]
                remove[:, -1] = False
                out = out.masked_fill(remove.scatter(1, sorted_idx, remove), neg)
            if bool(greedy.any()):
                one_hot = torch.full_like(scores, neg).scatter_(1, scores.argmax(dim=-1, keepdim=True), 0.0)
                out = torch.where(greedy[:, None], one_hot, out)
            return out

    return RowSampling()


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
    ids, mask, images, images_aux = engine._batch_inputs(requests)
    streamer = _RowStreamer(engine, requests, on_text, cancelled, on_done)

    class RowsDone(StoppingCriteria):
        # evaluated right after streamer.put() saw this step's tokens: [B] bool, True = row finished
        def __call__(self, input_ids, scores, **kw):
            flags = [d or (cancelled is not None and cancelled(i)) for i, d in enumerate(streamer.done)]
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    pad_id = engine.tokenizer.pad_token_id
    kwargs: dict = dict(max_new_tokens=max(r.params.max_new_tokens for r in requests), num_beams=1,
                        eos_token_id=engine.eos_ids or None, use_cache=True,
                        pad_token_id=pad_id if pad_id is not None else (engine.eos_ids[0] if engine.eos_ids else None),
                        stopping_criteria=StoppingCriteriaList([RowsDone()]), streamer=streamer)
    if all(not r.params.do_sample for r in requests):
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        top_k = getattr(engine.model.generation_config, "top_k", None)
        top_k = 50 if top_k is None else int(top_k)  # transformers' default when the model sets none
        # the per-row processor does all warping; switch off the global warpers
        kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      logits_processor=LogitsProcessorList([_row_sampling_processor(requests, top_k, ids.device)]))
    with engine.lock, torch.inference_mode():
        engine.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask, **kwargs)
    return streamer.results


# -- continuous batching: rows join and leave a running batch between decoding steps -----------------
class ContinuousBatch:
    """A batch of rows decoded one token per `step()`, sharing one KV cache; new rows can `add()`
    between steps and finished rows leave at once (used by mgm.serve.batcher in continuous mode).

    Joining rows are prefilled together (images encoded, left padding, exactly as `model.generate`
    prepares them), then their cache is left-padded to the running length and stacked under the
    running rows; rows keep their own position ids. Leaving rows are cut out of the cache and the
    leading columns no row needs any more are trimmed. Sampling is per row (temperature, top-k as
    transformers' default 50 unless the model's generation config says otherwise, top-p; greedy rows
    take the argmax). Other generation-config processors (repetition penalty, ...) are not applied.
    Shapes: mask [B, L] (1 = real token), positions / next_tokens [B], cache layers [B, heads, L, dim].
    """

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self.rows: list[_Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.next_tokens: torch.Tensor | None = None
        top_k = getattr(engine.model.generation_config, "top_k", None)
        self.top_k = 50 if top_k is None else int(top_k)

    @property
    def size(self) -> int:
        return len(self.rows)

    def new_row(self, request: Request, **kwargs) -> _Row:
        """A row for `request` (keyword arguments as `_Row`: on_text, on_done, cancelled, max_tokens)."""
        return _Row(self.engine, request, **kwargs)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """logits [B, V] → next token ids [B]."""
        if all(not row.request.params.do_sample for row in rows):
            return logits.argmax(dim=-1)
        process = _row_sampling_processor([row.request for row in rows], self.top_k, logits.device)
        probs = torch.softmax(process(None, logits.float()), dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)

    def add(self, rows: list[_Row]) -> None:
        """Prefill `rows` together and join them to the running batch (their first token is routed)."""
        if not rows:
            return
        engine, model = self.engine, self.engine.model
        from transformers import DynamicCache

        ids, mask, images, images_aux = engine._batch_inputs([row.request for row in rows])
        with engine.lock, torch.inference_mode():
            if images is not None:  # as MGM's generate(): image features spliced in, rows re-padded on the left
                _, _, new_mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
                    ids, None, mask, None, None, images, images_aux, padding_side="left")
                if new_mask is None:
                    new_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            else:
                embeds, new_mask = model.get_model().embed_tokens(ids), mask
            new_mask = new_mask.long()
            positions = (new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 1)
            out = model(inputs_embeds=embeds, attention_mask=new_mask, position_ids=positions,
                        past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
            tokens = self._sample(out.logits[:, -1, :], rows)
        self._join(out.past_key_values, new_mask, new_mask.sum(-1), tokens, rows)
        self._route(tokens, rows)

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
        self.cache = out.past_key_values
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
            if not row.done:
                row.done = True
                if row.on_error is not None:
                    row.on_error(exc)
        self.rows = []
        self._reset()

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _route(self, tokens: torch.Tensor, rows: list[_Row]) -> None:
        for row, token in zip(rows, tokens.tolist()):
            row.push(token)
        self._leave()

    def _reset(self) -> None:
        self.cache = self.mask = self.positions = self.next_tokens = None

    def _join(self, cache, mask: torch.Tensor, next_positions: torch.Tensor, tokens: torch.Tensor,
              rows: list[_Row]) -> None:
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
